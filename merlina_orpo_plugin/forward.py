"""One model forward over a collated ORPO batch, reduced to what the loss and the metrics need."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .losses import token_log_probs


class ORPOForwardOutput(NamedTuple):
    """What `concatenated_forward` returns; index it like a tuple or by name.

    ``chosen_logps``/``rejected_logps``: ``[B]`` mean completion log-probs (model dtype upcast to float32).
    ``nll_loss``: token-mean NLL of the chosen rows (scalar), ``nll_sum / nll_tokens``.
    ``chosen_logits_mean``/``rejected_logits_mean``: ``[B]`` mean logit over the vocabulary and the
    real (non-padding) predicting positions of each row, for the ``logits/*`` metrics.
    ``aux_loss``: the MoE router load-balancing loss, or None.
    ``nll_sum``/``nll_tokens``: the NLL numerator and token count, for exact gradient accumulation.
    """

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    nll_loss: torch.Tensor
    chosen_logits_mean: torch.Tensor
    rejected_logits_mean: torch.Tensor
    aux_loss: torch.Tensor | None
    nll_sum: torch.Tensor
    nll_tokens: torch.Tensor


def concatenated_forward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    nll_include_prompt: bool = True,
    output_router_logits: bool = False,
) -> ORPOForwardOutput:
    """Run ``model`` once over chosen and rejected rows (one forward, as DDP needs) and score them.

    ``batch`` is `ORPODataCollator`'s output: ``input_ids``, ``attention_mask``, ``completion_mask``,
    each ``[2B, T]``, chosen rows first.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    num_pairs = input_ids.shape[0] // 2
    kwargs = {"output_router_logits": True} if output_router_logits else {}
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    logits = outputs.logits[:, :-1, :]  # position t predicts token t + 1
    targets = input_ids[:, 1:]
    predicted = attention_mask[:, 1:].bool()  # target is a real token
    completion = batch["completion_mask"][:, 1:].bool()

    # Upcast per token to float32 before the log-softmax: in bfloat16 the logsumexp over a large
    # vocabulary keeps ~3 significant digits, too few for the mean log-probs near convergence.
    token_logps = token_log_probs(logits.float(), targets)

    completion_logps = (token_logps * completion).sum(-1) / completion.sum(-1)
    nll_mask = nll_target_mask(batch, nll_include_prompt)
    nll_sum = -(token_logps[:num_pairs] * nll_mask).sum()
    nll_tokens = nll_mask.sum()

    logits_mean = _masked_logits_mean(logits.detach(), predicted)
    aux_loss = getattr(outputs, "aux_loss", None) if output_router_logits else None
    return ORPOForwardOutput(
        chosen_logps=completion_logps[:num_pairs],
        rejected_logps=completion_logps[num_pairs:],
        nll_loss=nll_sum / nll_tokens.clamp(min=1),
        chosen_logits_mean=logits_mean[:num_pairs],
        rejected_logits_mean=logits_mean[num_pairs:],
        aux_loss=aux_loss,
        nll_sum=nll_sum,
        nll_tokens=nll_tokens,
    )


def _masked_logits_mean(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` mean of ``logits`` over the vocabulary and the positions where ``mask`` is set.

    TRL's ``logits/*`` metrics average over padding too, so they move with the batch's padding;
    this one does not.
    """
    per_position = logits.float().mean(-1)
    return (per_position * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def nll_target_mask(batch: dict[str, torch.Tensor], nll_include_prompt: bool = True) -> torch.Tensor:
    """``[B, T-1]`` targets of the NLL term: the chosen rows' real tokens, or only their completions.

    Shared by the forward and the gradient-accumulation token count so the two cannot drift apart.
    """
    num_pairs = batch["input_ids"].shape[0] // 2
    mask = batch["attention_mask"] if nll_include_prompt else batch["completion_mask"]
    return mask[:num_pairs, 1:].bool()
