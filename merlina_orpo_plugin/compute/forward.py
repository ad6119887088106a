"""One model forward over a collated ORPO batch, reduced to what the loss and the metrics need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .attention import build_attention_mask
from .losses import pair_chunk_loss
from ..model.adapter import (ModelFacts, capture_final_hidden, find_model_facts, fused_head_applies, score_hidden,
                             score_hidden_fused)
from .kernels import score_logits


class ORPOForwardOutput(NamedTuple):
    """What `concatenated_forward` returns; index it like a tuple or by name.

    ``chosen_logps``/``rejected_logps``: ``[B]`` mean completion log-probs (float32).
    ``nll_loss``: token-mean NLL of the chosen sequences (scalar), ``nll_sum / nll_tokens``.
    ``chosen_logits_mean``/``rejected_logits_mean``: ``[B]`` mean logit over the vocabulary and the
    positions that predict each completion, for the ``logits/*`` metrics.
    ``aux_loss``: the MoE router load-balancing loss, or None.
    ``nll_sum``/``nll_tokens``: the NLL numerator and token count, for exact gradient accumulation.
    ``processed_tokens``/``unique_tokens``: positions the model ran (padding included, an int
    known from the shape) and the batch's distinct tokens (each prompt once + chosen + rejected, a
    tensor on the batch's device, so reading it never waits for the GPU).
    ``loss``: with a `FusedLoss`, the loss itself, carrying the gradient (the log-probs are then
    detached); None otherwise.
    """

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    nll_loss: torch.Tensor
    chosen_logits_mean: torch.Tensor
    rejected_logits_mean: torch.Tensor
    aux_loss: torch.Tensor | None
    nll_sum: torch.Tensor
    nll_tokens: torch.Tensor
    processed_tokens: int = 0
    unique_tokens: torch.Tensor | int = 0
    loss: torch.Tensor | None = None


@dataclass(frozen=True)
class FusedLoss:
    """The ORPO loss's constants, so a trained head's chunked loss can be fused (`losses.pair_chunk_loss`):
    ``loss = -nll_scale * NLL log-prob sum - or_scale * beta * sum(logsigmoid(log_odds))``."""

    beta: float
    nll_scale: torch.Tensor | float
    or_scale: torch.Tensor | float


def concatenated_forward(
    model: torch.nn.Module,
    batch: dict,
    *,
    nll_include_prompt: bool = True,
    output_router_logits: bool = False,
    loss_chunk_size: int = 0,
    fused: FusedLoss | None = None,
    facts: ModelFacts | None = None,
) -> ORPOForwardOutput:
    """Run ``model`` once over every sequence of the batch (one forward, as DDP needs) and score it.

    ``batch`` is `ORPODataCollator`'s output in any of its layouts. ``loss_chunk_size`` > 0 computes
    the log-probs from the hidden states that many tokens at a time (`model.adapter.score_hidden`).
    With ``fused`` and a trained, unsharded head, the chunks hold whole pairs and the loss is summed
    chunk by chunk with its gradients taken in the forward (no recompute): ``loss`` is set.
    ``facts``: ``model``'s `model.adapter.ModelFacts` (found with ``chunked`` as ``loss_chunk_size`` > 0),
    as the trainer keeps them for the run; None finds them here, for this call.
    """
    if facts is None:
        facts = find_model_facts(model, chunked=loss_chunk_size > 0)
    index, targets, owner = scored_tokens(batch, nll_include_prompt)
    if batch["layout"].encoder_decoder:
        kwargs = _encoder_decoder_inputs(facts, batch)
    else:
        kwargs = {"input_ids": batch["input_ids"], "use_cache": False, **_attention_inputs(facts, batch)}
    if output_router_logits:
        kwargs["output_router_logits"] = True
    loss = None
    if loss_chunk_size > 0:
        with capture_final_hidden(facts) as captured:
            outputs = model(**kwargs, logits_to_keep=1)
        hidden = captured["hidden"]
        index, targets, owner = index.to(hidden.device), targets.to(hidden.device), owner.to(hidden.device)
        plan = None
        if fused is not None and fused_head_applies(facts, hidden):
            plan = _pair_chunks(batch, index, targets, owner, fused, loss_chunk_size, nll_include_prompt)
        if plan is not None:
            index, targets, owner, bounds, chunk_loss = plan
            loss, token_logps, logit_means = score_hidden_fused(facts, hidden, index, targets, bounds, chunk_loss)
        else:
            token_logps, logit_means = score_hidden(facts, hidden, index, targets, loss_chunk_size)
    else:
        outputs = model(**kwargs)
        logits = outputs.logits
        token_logps, logit_means = score_logits(logits, index.to(logits.device), targets.to(logits.device))
    aux_loss = getattr(outputs, "aux_loss", None) if output_router_logits else None
    return _reduced(batch, token_logps, logit_means, owner, aux_loss, loss)


def _reduced(batch, token_logps, logit_means, owner, aux_loss, loss) -> ORPOForwardOutput:
    """Per-token log-probs and mean logits of the scored tokens summed per sequence (`ORPOForwardOutput`)."""
    # Everything here lives where the log-probs are: under a device map the head's device, which
    # need not be the device the batch was put on.
    num_pairs = batch["pair_lengths"].shape[0]
    owner = owner.to(token_logps.device)
    owners = 3 * num_pairs  # chosen i, rejected B + i, prompt 2B + i
    sums = token_logps.new_zeros(owners).index_add(0, owner, token_logps)
    # index_add of ones rather than bincount: bincount has no deterministic CUDA kernel and no meta one.
    counts = token_logps.new_zeros(owners).index_add(0, owner, torch.ones_like(token_logps))
    logit_sums = logit_means.new_zeros(owners).index_add(0, owner, logit_means)
    completions = slice(0, 2 * num_pairs)
    logps = sums[completions] / counts[completions]
    logits_mean = logit_sums[completions] / counts[completions].clamp(min=1)
    nll_sum = -(sums[:num_pairs].sum() + sums[2 * num_pairs :].sum())
    nll_tokens = counts[:num_pairs].sum() + counts[2 * num_pairs :].sum()
    processed = batch["input_ids"].numel()
    if "decoder_input_ids" in batch:
        processed += batch["decoder_input_ids"].numel()
    return ORPOForwardOutput(
        chosen_logps=logps[:num_pairs],
        rejected_logps=logps[num_pairs:],
        nll_loss=nll_sum / nll_tokens.clamp(min=1),
        chosen_logits_mean=logits_mean[:num_pairs],
        rejected_logits_mean=logits_mean[num_pairs:],
        aux_loss=aux_loss,
        nll_sum=nll_sum,
        nll_tokens=nll_tokens,
        processed_tokens=processed,
        unique_tokens=batch["pair_lengths"].sum(),
        loss=loss,
    )


#: A pair longer than this many chunks is scored by the checkpointed path (see `_pair_chunks`).
_LONGEST_FUSED = 4


def _pair_chunks(batch, index, targets, owner, fused: FusedLoss, chunk_size: int, nll_include_prompt: bool):
    """The scored tokens grouped by pair (a stable sort on the device, no sync) and chunks of whole
    pairs of about ``chunk_size`` tokens (from the collator's host-side counts), with each chunk's loss.

    None when a single pair has more than ``_LONGEST_FUSED * chunk_size`` scored tokens: its chunk's
    logits would outgrow what chunking is for, and the checkpointed path takes the batch.
    """
    num_pairs = batch["pair_lengths"].shape[0]
    host = list(batch["scored_counts"])
    if not nll_include_prompt:
        host[2 * num_pairs :] = [0] * num_pairs
    if max(host[i] + host[num_pairs + i] + host[2 * num_pairs + i] for i in range(num_pairs)) > _LONGEST_FUSED * chunk_size:
        return None
    order = torch.argsort(owner % num_pairs, stable=True)
    index, targets, owner = index[order], targets[order], owner[order]
    bounds, pair_slices, start, first, size = [], {}, 0, 0, 0
    for pair in range(num_pairs):
        size += host[pair] + host[num_pairs + pair] + host[2 * num_pairs + pair]
        if size >= chunk_size or pair == num_pairs - 1:
            bounds.append((start, start + size))
            pair_slices[start] = slice(first, pair + 1)
            start, first, size = start + size, pair + 1, 0
    counts = torch.tensor(host, dtype=torch.float32, device=owner.device)

    def chunk_loss(logps: torch.Tensor, chunk_start: int, chunk_end: int) -> torch.Tensor:
        return pair_chunk_loss(logps, owner[chunk_start:chunk_end], counts, pair_slices[chunk_start],
                               beta=fused.beta, nll_scale=fused.nll_scale, or_scale=fused.or_scale)

    return index, targets, owner, bounds, chunk_loss


def scored_tokens(batch: dict[str, torch.Tensor], nll_include_prompt: bool = True):
    """``(index, target, owner)`` of the tokens to score; prompt tokens only when the NLL counts them."""
    index, targets, owner = batch["score_index"], batch["score_target"], batch["score_owner"]
    if not nll_include_prompt:
        keep = owner < 2 * batch["pair_lengths"].shape[0]
        index, targets, owner = index[keep], targets[keep], owner[keep]
    return index, targets, owner


def nll_token_count(batch: dict[str, torch.Tensor], nll_include_prompt: bool = True) -> torch.Tensor:
    """Targets of the NLL term in ``batch``: chosen completion tokens, and prompt tokens if counted.

    Shared by the forward and the gradient-accumulation token count so the two cannot drift apart.
    A 0-dim tensor on the batch's device: counting never waits for the GPU.
    """
    num_pairs = batch["pair_lengths"].shape[0]
    owner = batch["score_owner"]
    counted = owner < num_pairs
    if nll_include_prompt:
        counted = counted | (owner >= 2 * num_pairs)
    return counted.sum()


def _encoder_decoder_inputs(facts: ModelFacts, batch: dict) -> dict:
    """Encoder once per prompt, its output repeated for the chosen and the rejected decoder rows.

    TRL's encoder-decoder path encodes every prompt twice (its rows are repeated); gradients reach
    the encoder through the repeat exactly as through two copies.
    """
    from transformers.modeling_outputs import BaseModelOutput

    encoded = facts.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], return_dict=True)
    hidden = encoded.last_hidden_state.repeat(2, 1, 1)
    return {
        "encoder_outputs": BaseModelOutput(last_hidden_state=hidden),
        "attention_mask": batch["attention_mask"].repeat(2, 1),
        "decoder_input_ids": batch["decoder_input_ids"],
        "use_cache": False,
    }


def _attention_inputs(facts: ModelFacts, batch: dict) -> dict:
    """TRL's 2D padding mask for padded rows; positions and a custom mask for shared / packed rows."""
    layout = batch.get("layout")
    if layout is None:
        raise ValueError("the batch has no `layout`: collate ORPO batches with merlina_orpo_plugin.ORPODataCollator")
    if not layout.custom_mask:
        return {"attention_mask": batch["attention_mask"]}
    mask = build_attention_mask(batch["sequence_ids"], batch["branch_ids"], facts.attention, facts.mask_dtype)
    return {"attention_mask": mask, "position_ids": batch["position_ids"]}
