"""The token log-prob kernels of `compute.kernels` against plain autograd (``log_softmax`` then gather).

Each path has its own backward: the unchunked one (``score_logits``) builds the logits' gradient
chunk by chunk, the chunked one (``chunked_token_logps``) either recomputes each chunk (trainable
head) or keeps each row's gradient from the forward (frozen head). All must give autograd's values
and gradients, in float32, bfloat16 and float16, as Liger-Kernel tests its chunked losses: the
inputs (logits, or hidden states and head) are made in the dtype and the reference runs plain
autograd on the very same tensors, upcasting the logits to float32 before the log-softmax as the
kernels do. Tolerances are per dtype (``TOLERANCE``): where both sides compute the same float32 math
from the same rounded inputs they are float32's; where the head's matmul runs in the dtype on
differently sized chunks, or a gradient is rounded to the dtype at another point, they are a few
units of the dtype's rounding (bfloat16 keeps 8 bits of mantissa, float16 11).
"""

from __future__ import annotations

import pytest
import torch

from merlina_orpo_plugin.compute.kernels import chunked_token_logps, score_logits

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
#: (values, gradients) as assert_close keywords, per dtype of the inputs: bfloat16's rounding unit is
#: 2^-8 = 3.9e-3, float16's 2^-11 = 4.9e-4; the largest differences seen here are about 7e-3 and 1e-3
#: (other CPUs round bfloat16 matmuls in other orders: about twice that is allowed).
TOLERANCE = {
    torch.float32: (dict(rtol=1e-6, atol=1e-6), dict(rtol=1e-5, atol=1e-6)),
    torch.bfloat16: (dict(rtol=1.5e-2, atol=1.5e-2), dict(rtol=1.5e-2, atol=1.5e-2)),
    torch.float16: (dict(rtol=2e-3, atol=2e-3), dict(rtol=2e-3, atol=2e-3)),
}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))


def _reference(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.float()
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1), logits.mean(-1)


def _backward_names(tensor: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind ``tensor``."""
    names, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@dtypes
@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_full_logits_path_matches_autograd_with_repeated_rows(dtype, chunk_size):
    """Rows 3 and 20 are scored twice (a shared prompt's last position predicts both answers).

    Both sides compute in float32 from the same logits, so the values take float32's tolerance in
    every dtype; the gradient is rounded to the logits' dtype on both sides."""
    torch.manual_seed(0)
    logits = (torch.randn(3, 7, 50) * 4).to(dtype).requires_grad_()
    index = torch.tensor([0, 3, 3, 5, 20, 20, 11])
    targets = torch.tensor([1, 2, 9, 49, 0, 0, 3])
    weights = torch.randn(len(index))

    logps, means = score_logits(logits, index, targets, chunk_size=chunk_size)
    (logps * weights).sum().backward()
    grad, logits.grad = logits.grad, None
    ref_logps, ref_means = _reference(logits.reshape(-1, 50).index_select(0, index), targets)
    (ref_logps * weights).sum().backward()

    values, gradients = TOLERANCE[torch.float32][0], TOLERANCE[dtype][1]
    assert logps.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(logps, ref_logps, **values)
    torch.testing.assert_close(means, ref_means, **values)
    torch.testing.assert_close(grad, logits.grad, **gradients)
    assert grad.reshape(-1, 50)[[1, 2, 4]].abs().sum() == 0  # unscored rows get no gradient


def _head_case(frozen: bool, softcap: float | None, dtype=torch.float32, rows: int = 9):
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 50, bias=True).to(dtype)
    head.requires_grad_(not frozen)
    hidden = torch.randn(rows, 16).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (rows,))
    postprocess = None if softcap is None else (lambda x: torch.tanh(x / softcap) * softcap)
    return head, hidden, targets, postprocess


def _backprop(head, hidden, logps, weights) -> list[torch.Tensor]:
    """Backpropagate ``logps * weights``: the gradients of the hidden states and of the head's
    trainable weights, then cleared."""
    (logps * weights).sum().backward()
    got = [hidden.grad] + [p.grad for p in head.parameters() if p.requires_grad]
    hidden.grad = None
    head.zero_grad()
    return got


def _assert_matches_autograd(dtype, head, hidden, targets, postprocess, weights, logps, means):
    """Our values and gradients against plain autograd's on the same head and hidden states."""
    got = _backprop(head, hidden, logps, weights)
    logits = head(hidden)
    ref_logps, ref_means = _reference(postprocess(logits) if postprocess else logits, targets)
    expected = _backprop(head, hidden, ref_logps, weights)

    values, gradients = TOLERANCE[dtype]
    torch.testing.assert_close(logps, ref_logps, **values)
    torch.testing.assert_close(means, ref_means, **values)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(a, b, **gradients)
    return got


@dtypes
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-head", "trainable-head"])
@pytest.mark.parametrize("softcap", [None, 0.5])
def test_chunked_path_matches_autograd(dtype, frozen, softcap):
    head, hidden, targets, postprocess = _head_case(frozen, softcap, dtype)
    logps, means = chunked_token_logps(head, hidden, targets, 4, postprocess)
    assert logps.dtype == means.dtype == torch.float32
    # which backward runs: no recompute for a frozen head, checkpointing for a trainable one
    assert ("_FrozenHeadLogpsBackward" in _backward_names(logps)) == frozen
    got = _assert_matches_autograd(dtype, head, hidden, targets, postprocess, torch.randn(len(targets)), logps, means)
    assert len(got) == (1 if frozen else 3)


@dtypes
def test_recompute_forces_the_checkpointed_path_for_a_frozen_head(dtype):
    head, hidden, targets, _ = _head_case(frozen=True, softcap=None, dtype=dtype)
    forced, _ = chunked_token_logps(head, hidden, targets, 4, recompute=True)
    chosen, _ = chunked_token_logps(head, hidden, targets, 4)
    assert "_FrozenHeadLogpsBackward" not in _backward_names(forced)
    assert "_FrozenHeadLogpsBackward" in _backward_names(chosen)
    torch.testing.assert_close(forced, chosen, rtol=0, atol=0)  # the same forward, chunk for chunk
    forced.sum().backward()
    grad, hidden.grad = hidden.grad, None
    chosen.sum().backward()
    torch.testing.assert_close(grad, hidden.grad, **TOLERANCE[dtype][1])
    hidden.grad = None
    # ... and the forced path is autograd's too
    _assert_matches_autograd(dtype, head, hidden, targets, None, torch.randn(len(targets)),
                             *chunked_token_logps(head, hidden, targets, 4, recompute=True))


def test_chunked_path_without_autograd_keeps_no_graph():
    head, hidden, targets, _ = _head_case(frozen=True, softcap=None)
    with torch.no_grad():
        logps, _ = chunked_token_logps(head, hidden, targets, 4)
    assert logps.grad_fn is None and logps.shape == (9,)
    empty, _ = chunked_token_logps(head, hidden[:0], targets[:0], 4)
    assert empty.shape == (0,)


@dtypes
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-head", "trainable-head"])
@pytest.mark.parametrize("rows, num_chunks", [(9, 3), (9, 12), (0, 2)], ids=["3-chunks", "empty-chunks", "no-rows"])
def test_a_set_number_of_chunks_makes_that_many_head_calls_and_the_same_values(dtype, frozen, rows, num_chunks):
    """`num_chunks` (every ZeRO-3 rank calling the head equally often): exactly that many head calls
    in forward (and as many recomputes in backward for a trained head), with autograd's values."""
    head, hidden, targets, _ = _head_case(frozen, softcap=None, dtype=dtype, rows=rows)
    calls = []
    head.register_forward_pre_hook(lambda _module, args: calls.append(args[0].shape[0]))

    logps, means = chunked_token_logps(head, hidden, targets, 4, num_chunks=num_chunks)
    assert len(calls) == num_chunks and sum(calls) == rows and max(calls) <= 4
    _assert_matches_autograd(dtype, head, hidden, targets, None, torch.randn(rows), logps, means)
    # our backward recomputed each chunk of a trained head once; then came the reference's one head call
    assert len(calls) == (1 if frozen else 2) * num_chunks + 1
