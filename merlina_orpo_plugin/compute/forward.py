"""One model forward over a collated ORPO batch, reduced per sequence: log-prob sums and token counts.

`run_model` runs the model (the attention inputs of the batch's layout; the decoder's final hidden
states captured where the loss is chunked); `compute.head.score_pass` scores its pass. No loss here:
`compute.objective` puts it together. `forward` / `concatenated_forward` are the two in one call,
TRL's view of a forward.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch

from .attention import build_attention_mask
from ..batch.orpo_batch import ORPOBatch, as_batch
from ..model.adapter import ModelFacts, find_model_facts
from .head import score_pass
from .losses import SequenceScores, sequence_scores


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
    (`compute.head.score_hidden`).
    ``facts``: ``model``'s `model.adapter.ModelFacts` (found with ``chunked`` as ``loss_chunk_size`` > 0),
    as the trainer keeps them for the run; None finds them here, for this call.
    """
    batch = as_batch(batch)
    if facts is None:
        facts = find_model_facts(model, chunked=loss_chunk_size > 0)
    run = run_model(model, batch, facts=facts, chunked=loss_chunk_size > 0, nll_include_prompt=nll_include_prompt,
                    output_router_logits=output_router_logits)
    tokens = score_pass(batch, run, facts, loss_chunk_size)
    return sequence_scores(batch, tokens.token_logps, tokens.logit_means, tokens.owner, run.aux_loss)


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


@contextmanager
def capture_final_hidden(facts: ModelFacts):
    """Yield a dict whose ``"hidden"`` is the decoder's last hidden state after the forward."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        store["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = facts.decoder.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


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
