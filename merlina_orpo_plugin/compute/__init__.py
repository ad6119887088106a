"""The computation of a step, each room called once by `objective` (the loss of a micro-batch, plain or
fused): the model run over the batch (`forward`, with the attention masks per layout of `attention`), the
LM head over that pass (`head`, through the `kernels`), the sums per sequence and the ORPO loss as pure
tensor math (`losses`); and each micro-batch's share of the accumulation window (`accumulation`)."""
