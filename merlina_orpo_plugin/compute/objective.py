"""The ORPO loss of one micro-batch, in one of two modes (the room where the loss is put together).

``plain``: `forward.forward` gives per-sequence log-prob sums, `losses.orpo_terms` makes the loss of
them; backward runs through the log-probs. ``fused`` (`LossSpec.fused`, from `speed.SpeedPlan.fused_loss`,
decided once per run): the model runs once (`forward.run_model`), then the chunked head scores chunks of
whole pairs with `losses.orpo_terms` inside the kernel (`kernels.fused_chunk_loss` through
`model.adapter.score_hidden_fused`), each chunk's gradients taken in the forward, nothing recomputed.
Both modes return the same `ORPOStep`; its terms are computed by the same `losses.orpo_terms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import losses as L
from ..batch.orpo_batch import ORPOBatch, as_batch
from .forward import ModelPass, SequenceScores, forward, run_model, sequence_scores
from ..model.adapter import ModelFacts, find_model_facts, fused_head_applies, score_hidden, score_hidden_fused


@dataclass(frozen=True)
class LossSpec:
    """What the loss of a micro-batch depends on besides the model and the batch.

    ``beta``: lambda of the odds-ratio term; ``nll_include_prompt``: prompt tokens count in the NLL;
    ``loss_chunk_size``: > 0 scores from the hidden states that many tokens at a time; ``fused``: the
    fused mode where it applies (gradients enabled, a trained head whole on this process); ``router_loss_coef``:
    the MoE router loss's weight, None where the router loss is off.
    """

    beta: float
    nll_include_prompt: bool = True
    loss_chunk_size: int = 0
    fused: bool = False
    router_loss_coef: float | None = None


class ORPOStep(NamedTuple):
    """What `orpo_objective` returns: ``loss`` (with its gradient, router loss included), the loss's
    ``terms`` and the batch's ``scores`` (both detached), and whether the fused mode ``fused`` ran."""

    loss: torch.Tensor
    terms: L.ORPOTerms
    scores: SequenceScores
    fused: bool


def orpo_objective(model, batch: ORPOBatch | dict, spec: LossSpec, *, facts: ModelFacts | None = None,
                   scales: tuple = (None, None)) -> ORPOStep:
    """The ORPO loss ``nll_term + or_term`` (`losses.orpo_terms`) of ``batch``, plus the router loss.

    ``scales``: ``(nll_scale, or_scale)`` (`accumulation.loss_scales`); None each is the batch's own mean.
    ``facts``: ``model``'s `model.adapter.ModelFacts` as kept for the run; None finds them for this call.
    """
    batch, chunked = as_batch(batch), spec.loss_chunk_size > 0
    if facts is None:
        facts = find_model_facts(model, chunked=chunked)
    loss = None
    if spec.fused and chunked and torch.is_grad_enabled():
        loss, scores = _fused(model, batch, spec, facts, scales)
    else:
        scores = forward(model, batch, facts=facts, nll_include_prompt=spec.nll_include_prompt,
                         output_router_logits=spec.router_loss_coef is not None, loss_chunk_size=spec.loss_chunk_size)
    terms = L.orpo_terms(scores.logp_sums, scores.token_counts, spec.beta, *scales)  # fused: on detached sums
    fused = loss is not None
    if not fused:
        loss = terms.loss
    if spec.router_loss_coef is not None and scores.aux_loss is not None:
        loss = loss + spec.router_loss_coef * scores.aux_loss.to(loss.device)
    return ORPOStep(loss, terms.detached(), scores.detached(), fused)


def _fused(model, batch: ORPOBatch, spec: LossSpec, facts: ModelFacts,
           scales) -> tuple[torch.Tensor | None, SequenceScores]:
    """``(loss, detached scores)`` of the fused mode; ``(None, scores)`` where it does not apply (a
    frozen or sharded head, or a pair too long), the scores then carrying the gradient."""
    run = run_model(model, batch, facts=facts, chunked=True, nll_include_prompt=spec.nll_include_prompt,
                    output_router_logits=spec.router_loss_coef is not None)
    chunks = None
    if fused_head_applies(facts, run.output):
        chunks = _pair_chunks(batch, run, spec, scales)
    if chunks is None:
        token_logps, logit_means = score_hidden(facts, run.output, run.index, run.targets, spec.loss_chunk_size)
        return None, sequence_scores(batch, token_logps, logit_means, run.owner, run.aux_loss)
    index, targets, owner, bounds, chunk_loss = chunks
    loss, token_logps, logit_means = score_hidden_fused(facts, run.output, index, targets, bounds, chunk_loss)
    return loss, sequence_scores(batch, token_logps, logit_means, owner, run.aux_loss)


#: A pair longer than this many chunks is scored by the checkpointed path (see `_pair_chunks`).
_LONGEST_FUSED = 4


def _pair_chunks(batch: ORPOBatch, run: ModelPass, spec: LossSpec, scales):
    """The scored tokens grouped by pair (a stable sort on the device, no sync) and chunks of whole
    pairs of about ``loss_chunk_size`` tokens (from the collator's host-side counts), with each chunk's
    loss: `losses.orpo_terms` of its pairs, under the batch's scales.

    None when a single pair has more than ``_LONGEST_FUSED * loss_chunk_size`` scored tokens: its
    chunk's logits would outgrow what chunking is for, and the checkpointed path takes the batch.
    """
    num_pairs, chunk_size = batch["pair_lengths"].shape[0], spec.loss_chunk_size
    host = list(batch.scored_counts)
    if not spec.nll_include_prompt:
        host[2 * num_pairs :] = [0] * num_pairs
    per_pair = [host[i] + host[num_pairs + i] + host[2 * num_pairs + i] for i in range(num_pairs)]
    if max(per_pair) > _LONGEST_FUSED * chunk_size:
        return None
    order = torch.argsort(run.owner % num_pairs, stable=True)
    index, targets, owner = run.index[order], run.targets[order], run.owner[order]
    bounds, pair_slices, start, first, size = [], {}, 0, 0, 0
    for pair in range(num_pairs):
        size += per_pair[pair]
        if size >= chunk_size or pair == num_pairs - 1:
            bounds.append((start, start + size))
            pair_slices[start] = slice(first, pair + 1)
            start, first, size = start + size, pair + 1, 0
    # Counted on the device, as `forward.sequence_scores` does: a tensor built from the host list would be a
    # pageable host-to-device copy, which waits for the decoder forward just queued.
    counts = L.sequence_sums(torch.ones_like(owner, dtype=torch.float32), owner, 3 * num_pairs).view(3, num_pairs)
    nll_scale, or_scale = scales  # a chunk's share of the batch's loss: the batch's means where not given
    if nll_scale is None:
        nll_scale = 1.0 / max(1, sum(host[:num_pairs]) + sum(host[2 * num_pairs :]))
    if or_scale is None:
        or_scale = 1.0 / num_pairs

    def chunk_loss(logps: torch.Tensor, chunk_start: int, chunk_end: int) -> torch.Tensor:
        pairs = pair_slices[chunk_start]
        sums = L.sequence_sums(logps, owner[chunk_start:chunk_end], 3 * num_pairs).view(3, num_pairs)
        return L.orpo_terms(sums[:, pairs], counts[:, pairs], spec.beta, nll_scale, or_scale).loss

    return index, targets, owner, bounds, chunk_loss
