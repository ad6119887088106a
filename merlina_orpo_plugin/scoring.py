"""Per-token log-probs of the scored tokens, from full logits or in chunks from the hidden states.

The chunked path never holds the ``[tokens, V]`` logits of the whole batch: the model runs with
``logits_to_keep=1`` (its head computes one position per row), a forward hook on the decoder keeps
the final hidden states, and the head is applied to ``chunk_size`` scored positions at a time under
activation checkpointing, so backward recomputes one chunk's logits at a time too. Peak memory of
the loss is ``O(chunk_size * V)`` instead of ``O(2B * T * V)``.

The head is called as a module (``model.get_output_embeddings()``), so LoRA adapters on it, tied
embeddings and DeepSpeed ZeRO-3's parameter gathering (a hook on every module call) all apply.
Logit post-processing the model does after its head is reproduced for the configurations listed in
`logit_postprocess`; any other logit-related setting turns chunking off (`unsupported_reason`).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from .losses import token_log_probs

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


def _score_chunk(head, postprocess, hidden: torch.Tensor, targets: torch.Tensor):
    logits = head(hidden)
    if postprocess is not None:
        logits = postprocess(logits)
    logits = logits.float()  # the log-softmax over a large vocabulary needs float32 (see forward.py)
    return token_log_probs(logits, targets), logits.detach().mean(-1)


def score_hidden(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    index: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(target), mean logit)`` per scored token, from ``[R, W, H]`` hidden states of ``model``."""
    base = unwrap_model(model)
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    return chunked_token_logps(
        base.get_output_embeddings(), selected, targets, chunk_size, logit_postprocess(base.config)
    )


def chunked_token_logps(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(target), mean logit)`` for ``[N, H]`` hidden states, ``head`` applied ``chunk_size`` rows at a time.

    Under autograd each chunk is checkpointed: its ``[chunk_size, V]`` logits are freed after the
    forward and recomputed in backward, so at most one chunk's logits (and their gradient) exist.
    """
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    logps, means = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        chunk = (head, postprocess, hidden[start : start + chunk_size], targets[start : start + chunk_size])
        if recompute:
            logp, mean = checkpoint(_score_chunk, *chunk, use_reentrant=False)
        else:
            logp, mean = _score_chunk(*chunk)
        logps.append(logp)
        means.append(mean)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(means)


def score_logits(logits: torch.Tensor, index: torch.Tensor, targets: torch.Tensor):
    """The same from the model's full ``[R, W, V]`` logits (the unchunked path)."""
    selected = logits.reshape(-1, logits.shape[-1]).index_select(0, index).float()
    return token_log_probs(selected, targets), selected.detach().mean(-1)
