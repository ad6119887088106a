"""The model adapter: what the ORPO forward needs to know about a transformers model, and nothing else.

It unwraps DDP / DeepSpeed / PEFT wrappers, finds the LM head (called as a module, so LoRA on it,
tied embeddings and DeepSpeed ZeRO-3's gathering on module calls apply; under FSDP2 and ZeRO-3
`head_sharding` gathers what the module hooks do not, calls a head that is an FSDP2 unit without that
unit's hooks and keeps every rank's head calls equal in number), reproduces the logit
post-processing the model applies after its head, captures the decoder's final hidden states, and
says why the chunked loss cannot run on a model. The kernels it feeds (`compute.kernels`) take tensors and
a head module only.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Callable

import torch

from ..compute.kernels import chunked_token_logps, fused_chunk_loss
from .head_sharding import equal_chunk_count, gradients_in_forward_allowed, is_sharded, whole_head

# Config keys about logits that `logit_postprocess` reproduces, or that concern attention, not the head.
_HANDLED_LOGIT_KEYS = {"final_logit_softcapping", "logit_scale", "logits_scaling", "attn_logit_softcapping"}


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP / DeepSpeed (``.module``) and PEFT (``get_base_model``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def logit_postprocess(config) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the model applies to its head's output: Gemma's soft-capping, Cohere's and Granite's scales."""
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    divisor = getattr(config, "logits_scaling", None)
    steps = []
    if scale is not None:
        steps.append(lambda x: x * scale)
    if divisor is not None:
        steps.append(lambda x: x / divisor)
    if cap is not None:
        steps.append(lambda x: torch.tanh(x / cap) * cap)
    if not steps:
        return None

    def apply(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return apply


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the chunked loss cannot run on ``model`` (None when it can)."""
    base = unwrap_model(model)
    if base.get_output_embeddings() is None:
        return f"{type(base).__name__} has no output embeddings (LM head) to apply in chunks"
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return f"{type(base).__name__}.forward takes no `logits_to_keep`"
    config = getattr(base, "config", None)
    settings = config.to_dict() if config is not None else {}
    unknown = sorted(
        key for key, value in settings.items()
        if value is not None and ("logit" in key or "lm_head" in key) and key not in _HANDLED_LOGIT_KEYS
        and not isinstance(value, bool)
    )
    if unknown:
        return f"the model post-processes its logits in a way not reproduced here ({', '.join(unknown)})"
    return None


@contextmanager
def capture_final_hidden(model: torch.nn.Module):
    """Yield a dict whose ``"hidden"`` is the decoder's last hidden state after the forward."""
    decoder = unwrap_model(model).get_decoder()
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        store["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = decoder.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def score_hidden(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    index: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(target), mean logit)`` per scored token, from ``[R, W, H]`` hidden states of ``model``.

    ``index`` picks the predicting rows (flat into ``R * W``); the head runs ``chunk_size`` of them at a time.
    """
    base = unwrap_model(model)
    head = base.get_output_embeddings()
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    num_chunks = equal_chunk_count(head, selected.shape[0], chunk_size, selected.device)
    recompute = None if gradients_in_forward_allowed(head) else True
    with whole_head(model, head, backward_follows=torch.is_grad_enabled() and hidden.requires_grad) as call:
        return chunked_token_logps(
            call, selected, targets, chunk_size, logit_postprocess(base.config), recompute, num_chunks
        )


def fused_head_applies(model: torch.nn.Module, hidden: torch.Tensor) -> bool:
    """Whether `score_hidden_fused` can take the loss's gradients in the forward: training a head whose
    weights are whole on this process (a frozen head needs no fusing; FSDP2 / ZeRO-3 shard them)."""
    if not (torch.is_grad_enabled() and hidden.requires_grad):
        return False
    head = unwrap_model(model).get_output_embeddings()
    return any(p.requires_grad for p in head.parameters()) and not is_sharded(model, head)


def score_hidden_fused(model, hidden, index, targets, bounds, chunk_loss):
    """`score_hidden` with the loss summed over chunks of whole pairs (`compute.kernels.fused_chunk_loss`):
    ``(loss, detached log p(target), mean logit)``."""
    base = unwrap_model(model)
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    return fused_chunk_loss(base.get_output_embeddings(), selected, targets, bounds, chunk_loss,
                            logit_postprocess(base.config))
