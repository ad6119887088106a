"""One model forward over a collated ORPO batch, reduced per sequence: log-prob sums and token counts.

No loss here: `compute.objective` turns these sums into the ORPO loss (`compute.losses`), or, in
its fused mode, takes the model's pass (`run_model`) and scores it with the loss in the kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import losses as L
from .attention import build_attention_mask
from ..batch.orpo_batch import ORPOBatch, as_batch
from ..model.adapter import ModelFacts, capture_final_hidden, find_model_facts, score_hidden
from .kernels import score_logits


class SequenceScores(NamedTuple):
    """What `forward` returns: the batch's model output reduced per sequence, no loss.

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


class ORPOForwardOutput(NamedTuple):
    """TRL's view of a forward (what the trainer's ``concatenated_forward`` returns); index it like a
    tuple or by name. ``chosen_logps``/``rejected_logps``: ``[B]`` mean completion log-probs (float32);
    ``nll_loss``: token-mean NLL of the chosen sequences (and counted prompts); the ``[B]`` mean
    logits of `SequenceScores`; ``aux_loss``: the router loss or None."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    nll_loss: torch.Tensor
    chosen_logits_mean: torch.Tensor
    rejected_logits_mean: torch.Tensor
    aux_loss: torch.Tensor | None

    @classmethod
    def of(cls, scores: SequenceScores) -> "ORPOForwardOutput":
        sums, counts = scores.logp_sums, scores.token_counts
        return cls(sums[0] / counts[0], sums[1] / counts[1], scores.nll_sum / scores.nll_tokens.clamp(min=1),
                   scores.logits_mean[0], scores.logits_mean[1], scores.aux_loss)


class ModelPass(NamedTuple):
    """The model run once over a batch (`run_model`): ``output`` is the decoder's final hidden states
    ``[R, W, H]`` where the loss is chunked, else the logits ``[R, W, V]``; ``index``/``targets``/``owner``
    are `scored_tokens`, moved to ``output``'s device; ``aux_loss`` the router loss or None."""

    output: torch.Tensor
    index: torch.Tensor
    targets: torch.Tensor
    owner: torch.Tensor
    aux_loss: torch.Tensor | None


def forward(
    model: torch.nn.Module,
    batch: ORPOBatch | dict,
    *,
    facts: ModelFacts | None = None,
    nll_include_prompt: bool = True,
    output_router_logits: bool = False,
    loss_chunk_size: int = 0,
) -> SequenceScores:
    """Run ``model`` once over every sequence of the batch (one forward, as DDP needs) and score it.

    ``batch`` is `ORPODataCollator`'s output in any of its layouts (or a dict in its shape, `as_batch`).
    ``loss_chunk_size`` > 0 computes the log-probs from the hidden states that many tokens at a time
    (`model.adapter.score_hidden`).
    ``facts``: ``model``'s `model.adapter.ModelFacts` (found with ``chunked`` as ``loss_chunk_size`` > 0),
    as the trainer keeps them for the run; None finds them here, for this call.
    """
    batch = as_batch(batch)
    if facts is None:
        facts = find_model_facts(model, chunked=loss_chunk_size > 0)
    run = run_model(model, batch, facts=facts, chunked=loss_chunk_size > 0, nll_include_prompt=nll_include_prompt,
                    output_router_logits=output_router_logits)
    if loss_chunk_size > 0:
        token_logps, logit_means = score_hidden(facts, run.output, run.index, run.targets, loss_chunk_size)
    else:
        token_logps, logit_means = score_logits(run.output, run.index, run.targets)
    return sequence_scores(batch, token_logps, logit_means, run.owner, run.aux_loss)


def concatenated_forward(model: torch.nn.Module, batch: ORPOBatch | dict, **options) -> ORPOForwardOutput:
    """`forward` in TRL's shape: ``(chosen_logps, rejected_logps, nll_loss, ...)`` (`ORPOForwardOutput`)."""
    return ORPOForwardOutput.of(forward(model, batch, **options))


def run_model(model, batch: ORPOBatch | dict, *, facts: ModelFacts, chunked: bool, nll_include_prompt: bool = True,
              output_router_logits: bool = False) -> ModelPass:
    """The model's forward over ``batch`` with the attention inputs of its layout (`ModelPass`)."""
    batch = as_batch(batch)
    index, targets, owner = scored_tokens(batch, nll_include_prompt)
    if batch.layout.encoder_decoder:
        kwargs = _encoder_decoder_inputs(facts, batch)
    else:
        kwargs = {"input_ids": batch["input_ids"], "use_cache": False, **_attention_inputs(facts, batch)}
    if output_router_logits:
        kwargs["output_router_logits"] = True
    if chunked:
        with capture_final_hidden(facts) as captured:
            outputs = model(**kwargs, logits_to_keep=1)
        output = captured["hidden"]
    else:
        outputs = model(**kwargs)
        output = outputs.logits
    aux_loss = getattr(outputs, "aux_loss", None) if output_router_logits else None
    device = output.device
    return ModelPass(output, index.to(device), targets.to(device), owner.to(device), aux_loss)


def sequence_scores(batch: ORPOBatch, token_logps, logit_means, owner, aux_loss) -> SequenceScores:
    """Per-token log-probs and mean logits of the scored tokens summed per sequence (`SequenceScores`)."""
    # Everything here lives where the log-probs are: under a device map the head's device, which
    # need not be the device the batch was put on.
    num_pairs = batch["pair_lengths"].shape[0]
    owner = owner.to(token_logps.device)
    owners = 3 * num_pairs  # chosen i, rejected B + i, prompt 2B + i
    sums = L.sequence_sums(token_logps, owner, owners)
    counts = L.sequence_sums(torch.ones_like(token_logps), owner, owners)
    logit_sums = L.sequence_sums(logit_means, owner, owners)
    completions = slice(0, 2 * num_pairs)
    logits_mean = logit_sums[completions] / counts[completions].clamp(min=1)
    processed = batch["input_ids"].numel()
    if "decoder_input_ids" in batch:
        processed += batch["decoder_input_ids"].numel()
    return SequenceScores(sums.view(3, num_pairs), counts.view(3, num_pairs), logits_mean.view(2, num_pairs), aux_loss,
                          processed, batch["pair_lengths"].sum())


def scored_tokens(batch: ORPOBatch, nll_include_prompt: bool = True):
    """``(index, target, owner)`` of the tokens to score; prompt tokens only when the NLL counts them."""
    index, targets, owner = batch["score_index"], batch["score_target"], batch["score_owner"]
    if not nll_include_prompt:
        keep = owner < 2 * batch["pair_lengths"].shape[0]
        index, targets, owner = index[keep], targets[keep], owner[keep]
    return index, targets, owner


def nll_token_count(batch: ORPOBatch | dict, nll_include_prompt: bool = True) -> torch.Tensor:
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


def _encoder_decoder_inputs(facts: ModelFacts, batch: ORPOBatch) -> dict:
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


def _attention_inputs(facts: ModelFacts, batch: ORPOBatch) -> dict:
    """TRL's 2D padding mask for padded rows; positions and a custom mask for shared / packed rows."""
    if not batch.layout.custom_mask:
        return {"attention_mask": batch["attention_mask"]}
    mask = build_attention_mask(batch["sequence_ids"], batch["branch_ids"], facts.attention, facts.mask_dtype)
    return {"attention_mask": mask, "position_ids": batch["position_ids"]}
