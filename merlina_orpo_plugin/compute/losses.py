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

Nothing here touches trainer state or ``.item()``: per-example values are returned and the caller
reduces them. `sequence_scores` sums the scored tokens' log-probs per sequence (`SequenceScores`; it
moves each token's owner index to the log-probs' device, the one device move here); `orpo_terms` is
the loss of a micro-batch (or of a chunk of whole pairs) from those sums; `compute.objective` calls
both, in both of its modes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..batch.orpo_batch import ORPOBatch

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


def orpo_loss(nll: torch.Tensor, or_losses: torch.Tensor, or_scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """``L = L_SFT + lambda * L_OR`` (eq. 6) with ``or_losses = beta * logsigmoid(log_odds)`` per pair.

    ``nll``: the NLL term as it enters the loss; ``or_scale``: what the pairs' sum is multiplied by
    (None: their mean, ``1 / B``; the trainer passes its accumulation window's share instead).
    """
    if or_scale is None:
        return nll - or_losses.mean()
    return nll - or_losses.sum() * or_scale


class ORPOTerms(NamedTuple):
    """What `orpo_terms` returns: the loss and every term it is made of.

    ``loss`` (scalar) ``= nll_term + or_term``; ``nll_term``: ``nll_scale * -(chosen + prompt
    log-prob sums)``; ``or_term``: ``-or_scale * sum(or_losses)``. Per pair ``[P]``: the mean completion
    log-probs ``chosen_logps`` / ``rejected_logps`` and `odds_ratio_loss`'s five values.
    """

    loss: torch.Tensor
    nll_term: torch.Tensor
    or_term: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    or_losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    ratio: torch.Tensor
    log_odds: torch.Tensor

    def detached(self) -> "ORPOTerms":
        return ORPOTerms(*(t.detach() for t in self))


def orpo_terms(
    logp_sums: torch.Tensor,
    token_counts: torch.Tensor,
    beta: float,
    nll_scale: torch.Tensor | float | None = None,
    or_scale: torch.Tensor | float | None = None,
) -> ORPOTerms:
    """The ORPO loss of ``P`` whole pairs from their per-sequence log-prob sums (`orpo_loss`).

    Args:
        logp_sums: ``[3, P]`` summed token log-probs per sequence: row 0 the chosen completions, row 1
            the rejected ones, row 2 the prompts (0 where the NLL leaves prompts out).
        token_counts: ``[3, P]`` the scored tokens of the same sequences.
        beta: lambda, the weight of the odds-ratio term.
        nll_scale: what the NLL sum ``-(chosen + prompt sums)`` is multiplied by; None divides it by its
            tokens (``token_counts[0] + token_counts[2]``), a token mean.
        or_scale: see `orpo_loss` (None: the pair mean).

    Linear in the pairs given fixed scales: the loss of a batch is the sum of the losses of any split of
    it into whole pairs (the fused chunked loss sums them chunk by chunk).
    """
    chosen = logp_sums[0] / token_counts[0]
    rejected = logp_sums[1] / token_counts[1]
    nll_sum = -(logp_sums[0].sum() + logp_sums[2].sum())
    if nll_scale is None:
        nll_term = nll_sum / (token_counts[0].sum() + token_counts[2].sum()).clamp(min=1)
    else:
        nll_term = nll_sum * nll_scale
    or_losses, chosen_rewards, rejected_rewards, ratio, log_odds = odds_ratio_loss(chosen, rejected, beta)
    or_term = -or_losses.mean() if or_scale is None else -or_losses.sum() * or_scale
    loss = orpo_loss(nll_term, or_losses, or_scale)
    return ORPOTerms(loss, nll_term, or_term, chosen, rejected, or_losses, chosen_rewards, rejected_rewards, ratio,
                     log_odds)


class SequenceScores(NamedTuple):
    """The batch's model output reduced per sequence, no loss (what `score_pass` returns).

    ``logp_sums``/``token_counts``: ``[3, B]`` summed log-probs and scored tokens of the chosen
    completions (row 0), the rejected ones (row 1) and the prompts (row 2; 0 where the NLL leaves
    them out), float32, on the head's device (`losses.orpo_terms` takes them as they are).
    ``logits_mean``: ``[2, B]`` mean logit over the vocabulary and the positions that predict each
    chosen / rejected completion, for the ``logits/*`` metrics.
    ``aux_loss``: the MoE router load-balancing loss, or None.
    ``processed_tokens``/``unique_tokens``: positions the model ran (padding included, an int known
    from the shape) and the batch's distinct tokens (each prompt once + chosen + rejected, a tensor
    on the batch's device, so reading it never waits for the GPU).
    """

    logp_sums: torch.Tensor
    token_counts: torch.Tensor
    logits_mean: torch.Tensor
    aux_loss: torch.Tensor | None
    processed_tokens: int
    unique_tokens: torch.Tensor | int

    @property
    def nll_sum(self) -> torch.Tensor:
        """The NLL numerator: minus the log-prob sum of the chosen completions and counted prompts."""
        return -(self.logp_sums[0].sum() + self.logp_sums[2].sum())

    @property
    def nll_tokens(self) -> torch.Tensor:
        return self.token_counts[0].sum() + self.token_counts[2].sum()

    def detached(self) -> "SequenceScores":
        aux = None if self.aux_loss is None else self.aux_loss.detach()
        return self._replace(logp_sums=self.logp_sums.detach(), logits_mean=self.logits_mean.detach(), aux_loss=aux)


def sequence_scores(batch: ORPOBatch, token_logps, logit_means, owner, aux_loss) -> SequenceScores:
    """Per-token log-probs and mean logits of the scored tokens summed per sequence (`SequenceScores`)."""
    # Everything here lives where the log-probs are: under a device map the head's device, which
    # need not be the device the batch was put on.
    num_pairs = batch["pair_lengths"].shape[0]
    owner = owner.to(token_logps.device)
    owners = 3 * num_pairs  # chosen i, rejected B + i, prompt 2B + i
    sums = sequence_sums(token_logps, owner, owners)
    counts = sequence_sums(torch.ones_like(token_logps), owner, owners)
    logit_sums = sequence_sums(logit_means, owner, owners)
    completions = slice(0, 2 * num_pairs)
    logits_mean = logit_sums[completions] / counts[completions].clamp(min=1)
    processed = batch["input_ids"].numel()
    if "decoder_input_ids" in batch:
        processed += batch["decoder_input_ids"].numel()
    return SequenceScores(sums.view(3, num_pairs), counts.view(3, num_pairs), logits_mean.view(2, num_pairs), aux_loss,
                          processed, batch["pair_lengths"].sum())


def sequence_sums(values: torch.Tensor, owner: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """``[num_sequences]`` sums of per-token ``values`` by their sequence ``owner``.

    ``index_add`` rather than ``bincount``: bincount has no deterministic CUDA kernel and no meta one.
    """
    return values.new_zeros(num_sequences).index_add(0, owner, values)
