"""ORPO loss math as pure tensor functions.

Hong, Lee, Thorne, "ORPO: Monolithic Preference Optimization without Reference Model",
arXiv:2403.07691, eqs. (2)-(7):

    odds_theta(y|x) = P_theta(y|x) / (1 - P_theta(y|x))
    L_OR  = -log sigmoid( log( odds_theta(y_w|x) / odds_theta(y_l|x) ) )
    L     = L_SFT + lambda * L_OR

``P_theta(y|x)`` is the length-normalised likelihood ``exp(mean_t log p(y_t | x, y_<t))``, so every
function here works on *mean* completion log-probs ``c = log P(y_w|x)``, ``r = log P(y_l|x)``:

    log_odds = (c - r) - (log(1 - exp(c)) - log(1 - exp(r)))

``lambda`` is called ``beta`` (TRL's and Axolotl's name; Axolotl also reads ``orpo_alpha``).

Nothing here touches trainer state, devices or ``.item()``: per-example values are returned and the
caller reduces them. The trainer, the chunked paths and the tests all call these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
_LN_HALF = -math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable over the whole range.

    ``log1p(-exp(x))`` cancels catastrophically near 0 (in float32 at x = -1e-8 it gives -inf,
    the true value is about -18.42), ``log(-expm1(x))`` loses precision for very negative x.
    Maechler (2012) switches at ``x = -ln 2``, as TRL 1.9 does. Each branch also gets its input
    clamped to its own side of the switch: ``torch.where`` differentiates both branches, and the
    unused ``log1p(-exp(x))`` at x = -1e-8 has an infinite gradient that the mask turns into NaN
    (TRL's version has exactly this NaN gradient).
    """
    small = torch.log1p(-torch.exp(x.clamp(max=_LN_HALF)))
    near_zero = torch.log(-torch.expm1(x.clamp(min=_LN_HALF)))
    return torch.where(x < _LN_HALF, small, near_zero)


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    average_log_prob: bool = True,
    ignore_index: int = IGNORE_INDEX,
    shift: bool = True,
) -> torch.Tensor:
    """Sum or mean log-prob of the labelled tokens of each sequence.

    Args:
        logits: ``[B, T, V]`` next-token logits, position t predicts token t + 1.
        labels: ``[B, T]`` token ids, ``ignore_index`` where a token is not scored (prompt, padding).
        average_log_prob: mean over scored tokens (ORPO's ``log P(y|x)``) instead of the sum.
        shift: decoder-only logits predict the NEXT token: ``labels[:, 1:]`` against ``logits[:, :-1]``,
            as in TRL's ``get_batch_logps``; an encoder-decoder's decoder logit ``t`` predicts label ``t``.

    Returns:
        ``[B]`` in the dtype of ``logits``.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    if shift:
        labels = labels[:, 1:]
        logits = logits[:, :-1, :]
    mask = labels != ignore_index
    safe_labels = labels.masked_fill(~mask, 0)
    token_logps = token_log_probs(logits, safe_labels)
    summed = (token_logps * mask).sum(-1)
    if average_log_prob:
        return summed / mask.sum(-1)
    return summed


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., labels]`` without keeping the full log-softmax tensor.

    ``logits[..., y] - logsumexp(logits)`` is the same number as gathering from ``log_softmax``
    but allocates ``[..., V]`` once (the logsumexp reduction) instead of twice.
    """
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def odds_ratio_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair odds-ratio term of ORPO (paper eq. 7, times lambda).

    Args:
        chosen_logps: ``[B]`` mean completion log-probs ``c`` of the chosen answers, any float dtype.
        rejected_logps: ``[B]`` the same ``r`` for the rejected answers.
        beta: lambda, the weight of the odds-ratio term.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards, ratio, log_odds)``, each ``[B]``:
        ``losses = beta * logsigmoid(log_odds)`` (<= 0; the total loss *subtracts* its mean, as in
        TRL), ``chosen_rewards = beta * c`` and ``rejected_rewards = beta * r`` (detached),
        ``ratio = logsigmoid(log_odds)`` and ``log_odds`` (float32). TRL returns the batch means of
        ``ratio`` and ``log_odds``; the caller reduces here.

    The log-odds are computed in float32 whatever the model dtype: in bfloat16 ``c - r`` and the
    ``log1mexp`` terms lose all their digits near convergence.
    """
    c = chosen_logps.float()
    r = rejected_logps.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    ratio = F.logsigmoid(log_odds)
    losses = beta * ratio
    chosen_rewards = beta * chosen_logps.detach()
    rejected_rewards = beta * rejected_logps.detach()
    return losses, chosen_rewards, rejected_rewards, ratio, log_odds


def orpo_loss(nll_loss: torch.Tensor, or_losses: torch.Tensor) -> torch.Tensor:
    """``L = L_SFT + lambda * L_OR`` with ``or_losses = beta * logsigmoid(log_odds)`` per pair."""
    return nll_loss - or_losses.mean()


def pair_chunk_loss(
    token_logps: torch.Tensor,
    owner: torch.Tensor,
    counts: torch.Tensor,
    pairs: slice,
    *,
    beta: float,
    nll_scale: torch.Tensor | float,
    or_scale: torch.Tensor | float,
) -> torch.Tensor:
    """One chunk's share of the ORPO loss, for a chunk that holds every scored token of ``pairs``.

    ``owner`` numbers each token's sequence as the collator does (chosen ``i``, rejected ``B + i``,
    prompt ``2B + i``), ``counts`` ``[3B]`` the scored tokens of every sequence in the batch. The
    share is ``-nll_scale * (log-probs of the chunk's chosen and prompt tokens)`` plus
    ``-or_scale * beta * sum(logsigmoid(log_odds))`` over its pairs; summed over chunks, with
    ``nll_scale = 1 / NLL tokens`` and ``or_scale = 1 / B``, it is ``orpo_loss`` (the trainer passes
    its accumulation window's scales instead). Linear in the pairs, so chunks add up exactly.
    """
    num_pairs = counts.shape[0] // 3
    sums = token_logps.new_zeros(counts.shape[0]).index_add(0, owner, token_logps)
    chosen_sums = sums[pairs]
    rejected_sums = sums[pairs.start + num_pairs : pairs.stop + num_pairs]
    prompt_sums = sums[pairs.start + 2 * num_pairs : pairs.stop + 2 * num_pairs]
    chosen = chosen_sums / counts[pairs]
    rejected = rejected_sums / counts[pairs.start + num_pairs : pairs.stop + num_pairs]
    or_losses = odds_ratio_loss(chosen, rejected, beta)[0]
    return -(chosen_sums.sum() + prompt_sums.sum()) * nll_scale - or_losses.sum() * or_scale
