"""The token log-prob kernels of `scoring` against plain autograd (``log_softmax`` then gather).

Each path has its own backward: the unchunked one builds the logits' gradient chunk by chunk, the
chunked one either recomputes each chunk (trainable head) or keeps each row's gradient from the
forward (frozen head). All must give autograd's values and gradients.
"""

from __future__ import annotations

import pytest
import torch

from merlina_orpo_plugin.scoring import chunked_token_logps, score_logits


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_full_logits_path_matches_autograd_with_repeated_rows(dtype, chunk_size):
    """Rows 3 and 20 are scored twice (a shared prompt's last position predicts both answers)."""
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

    assert logps.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(logps, ref_logps, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(means, ref_means, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, logits.grad, rtol=1e-6, atol=1e-6)
    assert grad.reshape(-1, 50)[[1, 2, 4]].abs().sum() == 0  # unscored rows get no gradient


def _head_case(frozen: bool, softcap: float | None):
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 50, bias=True)
    head.requires_grad_(not frozen)
    hidden = torch.randn(9, 16, requires_grad=True)
    targets = torch.randint(0, 50, (9,))
    postprocess = None if softcap is None else (lambda x: torch.tanh(x / softcap) * softcap)
    return head, hidden, targets, postprocess


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-head", "trainable-head"])
@pytest.mark.parametrize("softcap", [None, 0.5])
def test_chunked_path_matches_autograd(frozen, softcap):
    head, hidden, targets, postprocess = _head_case(frozen, softcap)
    weights = torch.randn(len(targets))

    logps, means = chunked_token_logps(head, hidden, targets, 4, postprocess)
    (logps * weights).sum().backward()
    got = [hidden.grad] + [p.grad for p in head.parameters() if p.requires_grad]
    hidden.grad = None
    head.zero_grad()
    logits = head(hidden)
    ref_logps, ref_means = _reference(postprocess(logits) if postprocess else logits, targets)
    (ref_logps * weights).sum().backward()
    expected = [hidden.grad] + [p.grad for p in head.parameters() if p.requires_grad]

    torch.testing.assert_close(logps, ref_logps, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(means, ref_means, rtol=1e-6, atol=1e-6)
    assert len(got) == (1 if frozen else 3)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # which backward ran: no recompute for a frozen head, checkpointing for a trainable one
    assert ("_FrozenHeadLogpsBackward" in _backward_names(logps)) == frozen


def test_recompute_forces_the_checkpointed_path_for_a_frozen_head():
    head, hidden, targets, _ = _head_case(frozen=True, softcap=None)
    forced, _ = chunked_token_logps(head, hidden, targets, 4, recompute=True)
    chosen, _ = chunked_token_logps(head, hidden, targets, 4)
    assert "_FrozenHeadLogpsBackward" not in _backward_names(forced)
    assert "_FrozenHeadLogpsBackward" in _backward_names(chosen)
    torch.testing.assert_close(forced, chosen, rtol=0, atol=0)
    forced.sum().backward()
    grad, hidden.grad = hidden.grad, None
    chosen.sum().backward()
    torch.testing.assert_close(grad, hidden.grad, rtol=1e-6, atol=1e-7)


def test_chunked_path_without_autograd_keeps_no_graph():
    head, hidden, targets, _ = _head_case(frozen=True, softcap=None)
    with torch.no_grad():
        logps, _ = chunked_token_logps(head, hidden, targets, 4)
    assert logps.grad_fn is None and logps.shape == (9,)
    empty, _ = chunked_token_logps(head, hidden[:0], targets[:0], 4)
    assert empty.shape == (0,)


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-head", "trainable-head"])
@pytest.mark.parametrize("rows, num_chunks", [(9, 3), (9, 12), (0, 2)], ids=["3-chunks", "empty-chunks", "no-rows"])
def test_a_set_number_of_chunks_makes_that_many_head_calls_and_the_same_values(frozen, rows, num_chunks):
    """`num_chunks` (every ZeRO-3 rank calling the head equally often): exactly that many head calls
    in forward (and as many recomputes in backward for a trained head), with autograd's values."""
    head, hidden, targets, _ = _head_case(frozen, softcap=None)
    hidden = hidden[:rows].detach().requires_grad_()
    targets = targets[:rows]
    calls = []
    head.register_forward_pre_hook(lambda _module, args: calls.append(args[0].shape[0]))
    weights = torch.randn(rows)

    logps, means = chunked_token_logps(head, hidden, targets, 4, num_chunks=num_chunks)
    assert len(calls) == num_chunks and sum(calls) == rows and max(calls) <= 4
    (logps * weights).sum().backward()
    assert len(calls) == (1 if frozen else 2) * num_chunks
    got = [hidden.grad] + [p.grad for p in head.parameters() if p.requires_grad]
    hidden.grad = None
    head.zero_grad()
    ref_logps, ref_means = _reference(head(hidden), targets)
    (ref_logps * weights).sum().backward()
    expected = [hidden.grad] + [p.grad for p in head.parameters() if p.requires_grad]

    torch.testing.assert_close(logps, ref_logps, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(means, ref_means, rtol=1e-6, atol=1e-6)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
