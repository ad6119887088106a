"""The ORPO loss of one micro-batch, in one of two modes (the room where the loss is put together).

The model runs once (`forward.run_model`); the LM head scores its pass (`head.score_pass`); the
scores summed per sequence (`losses.sequence_scores`) make the terms of the loss (`losses.orpo_terms`).
``plain``: the scores carry the gradient and the loss is the terms'. ``fused`` (`LossSpec.fused` in
training, where the run's facts say the head is trained and whole here, `model.adapter.ModelFacts.fuses`):
the head scores chunks of whole pairs with the same `losses.orpo_terms` inside the kernel (`_pair_loss`),
each chunk's gradients taken in the forward, nothing recomputed; the terms are then computed again on the
detached sums, for the metrics. Both modes return the same `ORPOStep`; each room is entered once, from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import losses as L
from ..batch.orpo_batch import ORPOBatch, as_batch
from ..model.adapter import ModelFacts
from .accumulation import loss_scales
from .forward import run_model
from .head import PairLoss, score_pass


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
    scores: L.SequenceScores
    fused: bool


def orpo_objective(model, batch: ORPOBatch | dict, spec: LossSpec, *, facts: ModelFacts,
                   scales: tuple = (None, None)) -> ORPOStep:
    """The ORPO loss ``nll_term + or_term`` (`losses.orpo_terms`) of ``batch``, plus the router loss.

    ``scales``: ``(nll_scale, or_scale)`` (`accumulation.loss_scales`); None each is the batch's own mean.
    ``facts``: ``model``'s `model.adapter.ModelFacts` as the run keeps them (`speed.SpeedPlan.model_facts`;
    `find_model_facts` with ``chunked`` as ``spec.loss_chunk_size`` > 0).
    """
    batch, chunked = as_batch(batch), spec.loss_chunk_size > 0
    pair_loss = None
    if spec.fused and chunked and torch.is_grad_enabled():
        pair_loss = _pair_loss(batch, spec, scales)
    run = run_model(model, batch, facts=facts, chunked=chunked, nll_include_prompt=spec.nll_include_prompt,
                    output_router_logits=spec.router_loss_coef is not None)
    tokens = score_pass(batch, run, facts, spec.loss_chunk_size, pair_loss=pair_loss,
                        nll_include_prompt=spec.nll_include_prompt)
    scores = L.sequence_scores(batch, tokens.token_logps, tokens.logit_means, tokens.owner, run.aux_loss)
    terms = L.orpo_terms(scores.logp_sums, scores.token_counts, spec.beta, *scales)  # fused: on detached sums
    loss, fused = tokens.loss, tokens.loss is not None
    if not fused:
        loss = terms.loss
    if spec.router_loss_coef is not None and scores.aux_loss is not None:
        loss = loss + spec.router_loss_coef * scores.aux_loss.to(loss.device)
    return ORPOStep(loss, terms.detached(), scores.detached(), fused)


def _pair_loss(batch: ORPOBatch, spec: LossSpec, scales) -> PairLoss:
    """The fused mode's loss of some of the batch's pairs: `losses.orpo_terms` under the batch's scales
    (where ``scales`` leaves one None, the batch's own mean, as `accumulation.loss_scales` gives it)."""
    if None in scales:
        own = loss_scales(batch, spec.nll_include_prompt)
        scales = tuple(own[i] if given is None else given for i, given in enumerate(scales))
    nll_scale, or_scale = scales

    def pair_loss(logp_sums: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
        return L.orpo_terms(logp_sums, token_counts, spec.beta, nll_scale, or_scale).loss

    return pair_loss
