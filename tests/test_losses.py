"""The pure ORPO loss functions against golden values and a plain float64 reference.

Golden values carry their arithmetic in the docstring; the reference below is written from the
paper's equations with no stabilisation tricks beyond float64, so it is independent of the code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from merlina_orpo_plugin.compute import losses as L


def reference_log_odds(c: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """log(odds(c) / odds(r)), odds(x) = p / (1 - p), p = exp(x); float64, the paper's eq. (4)."""
    c, r = c.double(), r.double()
    return (c - torch.log(-torch.expm1(c))) - (r - torch.log(-torch.expm1(r)))


def reference_orpo(nll: torch.Tensor, c: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """L = L_SFT + beta * L_OR with L_OR = -mean(log sigmoid(log odds)) (eqs. 6-7)."""
    return nll.double() - beta * F.logsigmoid(reference_log_odds(c, r)).mean()


def reference_sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over labelled tokens of log_softmax, one loop per sequence, in float64."""
    out = []
    for row_logits, row_labels in zip(logits.double(), labels):
        logps = torch.log_softmax(row_logits[:-1], dim=-1)
        targets = row_labels[1:]
        picked = [logps[t, y] for t, y in enumerate(targets.tolist()) if y != L.IGNORE_INDEX]
        out.append(torch.stack(picked).mean())
    return torch.stack(out)


def test_golden_values():
    """c = log 0.5, r = log 0.25, beta = 0.1, nll = 2.

    odds(c) = 0.5 / 0.5 = 1, odds(r) = 0.25 / 0.75 = 1/3, so log_odds = log 3 = 1.098612.
    ratio = log sigmoid(log 3) = log(3 / 4) = -0.287682; losses = beta * ratio = -0.0287682.
    loss = nll - mean(losses) = 2.0287682; rewards: 0.1 * log 0.5 = -0.0693147, 0.1 * log 0.25 = -0.1386294.
    """
    c = torch.tensor([math.log(0.5)])
    r = torch.tensor([math.log(0.25)])
    losses, chosen_rewards, rejected_rewards, ratio, log_odds = L.odds_ratio_loss(c, r, beta=0.1)
    assert log_odds.item() == pytest.approx(math.log(3), rel=1e-6)
    assert ratio.item() == pytest.approx(math.log(0.75), rel=1e-6)
    assert losses.item() == pytest.approx(0.1 * math.log(0.75), rel=1e-6)
    assert chosen_rewards.item() == pytest.approx(0.1 * math.log(0.5), rel=1e-6)
    assert rejected_rewards.item() == pytest.approx(0.1 * math.log(0.25), rel=1e-6)
    assert L.orpo_loss(torch.tensor(2.0), losses).item() == pytest.approx(2.0287682, rel=1e-6)


def test_golden_sequence_logps():
    """Two tokens scored out of three: uniform logits over V = 4 give log(1/4) each, mean -1.386294.

    Labels [x, 1, 2] shift to targets [1, 2] predicted from positions 0 and 1; with prompt label
    -100 at position 1, only target 2 counts: logits row 1 = [0, 0, ln 2, 0] gives
    log(2 / 5) = -0.916291.
    """
    logits = torch.zeros(1, 3, 4)
    assert L.sequence_logps(logits, torch.tensor([[0, 1, 2]])).item() == pytest.approx(math.log(0.25), rel=1e-6)
    logits[0, 1, 2] = math.log(2.0)
    labels = torch.tensor([[0, -100, 2]])
    assert L.sequence_logps(logits, labels).item() == pytest.approx(math.log(0.4), rel=1e-6)
    assert L.sequence_logps(logits, labels, average_log_prob=False).item() == pytest.approx(math.log(0.4), rel=1e-6)


@pytest.mark.parametrize("x", [-1e4, -100.0, -20.0, -1.0, -math.log(2), -0.5, -1e-3, -1e-6, -1e-8])
def test_log1mexp_matches_float64(x):
    got = L.log1mexp(torch.tensor([x], dtype=torch.float32))
    want = torch.log(-torch.expm1(torch.tensor([x], dtype=torch.float64)))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-30)


def test_naive_log1mexp_fails_where_ours_does_not():
    """Why the stable form matters: log1p(-exp(-1e-8)) is -inf in float32; the truth is -18.42."""
    x = torch.tensor([-1e-8])
    assert torch.isinf(torch.log1p(-torch.exp(x))).all()
    assert L.log1mexp(x).item() == pytest.approx(math.log(1e-8), rel=1e-6)


TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("beta", [0.1, 0.25, 1.0])
def test_odds_ratio_loss_matches_reference(batch, dtype, beta):
    g = torch.Generator().manual_seed(batch)
    c = (-torch.rand(batch, generator=g) * 3 - 1e-3).to(dtype).requires_grad_()
    r = (-torch.rand(batch, generator=g) * 3 - 1e-3).to(dtype).requires_grad_()
    nll = torch.rand((), generator=g) * 2

    losses, chosen_rewards, rejected_rewards, ratio, log_odds = L.odds_ratio_loss(c, r, beta)
    loss = L.orpo_loss(nll, losses)
    loss.backward()
    c_ref = c.detach().double().requires_grad_()
    r_ref = r.detach().double().requires_grad_()
    loss_ref = reference_orpo(nll, c_ref, r_ref, beta)
    loss_ref.backward()

    assert log_odds.dtype == torch.float32 and ratio.dtype == torch.float32
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(log_odds.double(), reference_log_odds(c_ref, r_ref).detach(), **tol)
    torch.testing.assert_close(loss.double(), loss_ref.detach(), **tol)
    torch.testing.assert_close(chosen_rewards.double(), beta * c_ref.detach(), **tol)
    torch.testing.assert_close(rejected_rewards.double(), beta * r_ref.detach(), **tol)
    torch.testing.assert_close(c.grad.double(), c_ref.grad, **tol)
    torch.testing.assert_close(r.grad.double(), r_ref.grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_log_probs_stay_finite(dtype):
    """Mean log-probs anywhere in [-1e4, -1e-8], every chosen/rejected combination, loss and grads finite."""
    grid = torch.tensor([-1e4, -1e3, -50.0, -1.0, -0.1, -1e-4, -1e-6, -1e-8], dtype=torch.float64)
    c = grid.repeat_interleave(len(grid)).to(dtype).requires_grad_()
    r = grid.repeat(len(grid)).to(dtype).requires_grad_()
    losses, _, _, ratio, log_odds = L.odds_ratio_loss(c, r, beta=0.1)
    L.orpo_loss(torch.tensor(1.0), losses).backward()
    for t in (losses, ratio, log_odds, c.grad, r.grad):
        assert torch.isfinite(t).all(), t
    if dtype == torch.float32:
        torch.testing.assert_close(log_odds.double(), reference_log_odds(c.detach(), r.detach()), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 5, 11), (3, 7, 13), (4, 16, 50)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sequence_logps_matches_reference(shape, dtype):
    batch, length, vocab = shape
    g = torch.Generator().manual_seed(length)
    logits = (torch.randn(shape, generator=g) * 3).to(dtype)
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[:, : length // 3] = L.IGNORE_INDEX  # prompt
    labels[0, -1] = L.IGNORE_INDEX  # padding at the end of one row
    got = L.sequence_logps(logits.float(), labels)
    torch.testing.assert_close(got.double(), reference_sequence_logps(logits, labels), rtol=1e-5, atol=1e-5)


def test_sequence_logps_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"logits \(2, 3, 4\) and labels \(2, 4\) disagree"):
        L.sequence_logps(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


def test_golden_orpo_terms():
    """One pair, beta = 0.1: chosen 2 tokens of p = 0.5 (sum 2 ln 0.5), rejected 1 token of p = 0.25,
    prompt 2 tokens of p = 0.5 counted in the NLL.

    c = ln 0.5, r = ln 0.25: log_odds = ln 3 as in `test_golden_values`, or_term = -0.1 ln(3/4) = 0.0287682.
    nll_term = -(2 ln 0.5 + 2 ln 0.5) / 4 tokens = ln 2 = 0.6931472; loss = 0.7219154.
    With scales 1/8 (a window of 8 NLL tokens) and 1/2 (2 pairs): 4 ln 2 / 8 + 0.0287682 / 2 = 0.3609577.
    """
    half = math.log(0.5)
    sums = torch.tensor([[2 * half], [math.log(0.25)], [2 * half]])
    counts = torch.tensor([[2.0], [1.0], [2.0]])
    terms = L.orpo_terms(sums, counts, beta=0.1)
    assert terms.nll_term.item() == pytest.approx(math.log(2), rel=1e-6)
    assert terms.or_term.item() == pytest.approx(-0.1 * math.log(0.75), rel=1e-6)
    assert terms.loss.item() == pytest.approx(0.7219154, rel=1e-6)
    assert terms.chosen_logps.item() == pytest.approx(half, rel=1e-6)
    assert terms.log_odds.item() == pytest.approx(math.log(3), rel=1e-6)
    scaled = L.orpo_terms(sums, counts, beta=0.1, nll_scale=1 / 8, or_scale=1 / 2)
    assert scaled.loss.item() == pytest.approx(0.3609577, rel=1e-6)


@pytest.mark.parametrize("split", [1, 2, 4])
def test_orpo_terms_of_whole_pairs_add_up_and_match_the_reference(split):
    """What the fused chunked loss relies on: under fixed scales, the losses of any split of a batch into
    whole pairs sum to the batch's loss, with the same gradients; with its own means it is `reference_orpo`."""
    g = torch.Generator().manual_seed(split)
    counts = torch.randint(1, 9, (3, 5), generator=g).double()
    sums = (-torch.rand(3, 5, generator=g, dtype=torch.float64) * counts).requires_grad_()
    tokens = counts[0].sum() + counts[2].sum()
    whole = L.orpo_terms(sums, counts, 0.1)
    nll = -(sums[0].sum() + sums[2].sum()) / tokens
    reference = reference_orpo(nll, sums[0] / counts[0], sums[1] / counts[1], 0.1)
    torch.testing.assert_close(whole.loss, reference, rtol=1e-6, atol=0)
    (grad,) = torch.autograd.grad(whole.loss, sums)
    parts = sum(L.orpo_terms(sums[:, p], counts[:, p], 0.1, 1 / tokens, 1 / 5).loss
                for p in (slice(0, split), slice(split, 5)))
    # the odds-ratio term is computed in float32 (`odds_ratio_loss`), so the sums agree to float32's digits
    torch.testing.assert_close(parts, whole.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.autograd.grad(parts, sums)[0], grad, rtol=1e-6, atol=1e-9)
