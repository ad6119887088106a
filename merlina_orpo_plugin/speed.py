"""Which speed features a model can use: shared prompt, packed rows, chunked vocabulary loss.

Each feature is exactly the same training where it applies (tested to 1e-5 against the plain
path); where it cannot apply it is switched off and the reason is logged, never silently:

* shared prompt / packing need an attention implementation that takes a custom mask (`sdpa`,
  `eager`, `flex_attention`; flash-attention kernels take none), no sliding window shorter than
  a sequence (a custom mask replaces the window) and no MoE router loss (it is computed over the
  padded rows' tokens);
* the chunked loss needs the model's LM head as a module and `logits_to_keep` (`scoring.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .attention import CUSTOM_MASK_IMPLEMENTATIONS
from .scoring import unsupported_reason, unwrap_model

logger = logging.getLogger("merlina_orpo_plugin.speed")


@dataclass(frozen=True)
class SpeedPlan:
    prefix_sharing: bool
    padding_free: bool
    loss_chunk_size: int
    fallbacks: tuple[str, ...] = ()


def plan_speed(
    model: torch.nn.Module,
    *,
    prefix_sharing: bool = True,
    padding_free: bool = True,
    loss_chunk_size: int = 0,
    max_length: int | None = None,
) -> SpeedPlan:
    """The features asked for that ``model`` can use, with the reason for each one turned off."""
    fallbacks = []
    if prefix_sharing or padding_free:
        reason = _custom_mask_blocker(unwrap_model(model).config, max_length)
        if reason:
            asked = " and ".join(n for n, on in (("prefix_sharing", prefix_sharing), ("padding_free", padding_free)) if on)
            fallbacks.append(f"{asked} off: {reason}")
            prefix_sharing = padding_free = False
    if loss_chunk_size and loss_chunk_size > 0:
        reason = unsupported_reason(model)
        if reason:
            fallbacks.append(f"loss_chunk_size off: {reason}")
            loss_chunk_size = 0
    else:
        loss_chunk_size = 0
    plan = SpeedPlan(prefix_sharing, padding_free, loss_chunk_size, tuple(fallbacks))
    for note in plan.fallbacks:
        logger.warning("ORPO speed feature %s (falling back to the padded, unchunked path)", note)
    return plan


def _custom_mask_blocker(config, max_length: int | None) -> str | None:
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in CUSTOM_MASK_IMPLEMENTATIONS:
        return (
            f"attention implementation {implementation!r} takes no custom attention mask "
            f"(use one of {', '.join(CUSTOM_MASK_IMPLEMENTATIONS)})"
        )
    if getattr(config, "output_router_logits", False):
        return "the MoE router loss is computed over padded rows"
    window = getattr(config, "sliding_window", None)
    uses_window = window is not None and getattr(config, "use_sliding_window", True) is not False
    if uses_window and (max_length is None or window < max_length):
        return f"sliding-window attention (window {window}) shorter than max_length ({max_length})"
    return None


def configure_collator(collator, plan: SpeedPlan) -> None:
    """Switch an `ORPODataCollator` to the planned layout; other collators are left as they are."""
    from .collator import ORPODataCollator

    if isinstance(collator, ORPODataCollator):
        collator.prefix_sharing = plan.prefix_sharing
        collator.padding_free = plan.padding_free
