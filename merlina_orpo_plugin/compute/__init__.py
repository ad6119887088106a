"""The computation of a step: attention masks per layout (`attention`), the forward over chosen and
rejected (`forward`), log-probs from hidden states in chunks (`kernels`), the ORPO loss as pure tensor
math (`losses`), the loss of a micro-batch put together, plain or fused (`objective`), and each
micro-batch's share of the accumulation window (`accumulation`)."""
