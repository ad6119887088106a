"""Which speed features a model can use: shared prompt, packed rows, chunked vocabulary loss.

Each feature is exactly the same training where it applies (tested to 1e-5 against the plain
path); where it cannot apply it is switched off and the reason is logged, never silently:

* shared prompt / packing need an attention implementation that takes a custom mask (`sdpa`,
  `eager`, `flex_attention`; flash-attention kernels take none), no sliding window shorter than
  a sequence (a custom mask replaces the window) and no MoE router loss (it is computed over the
  padded rows' tokens);
* on CUDA those layouts run on FlexAttention (`flex_attention` option, on by default): a dense
  mask makes sdpa compute every masked block, FlexAttention skips them. The model's `sdpa` or
  flash-attention implementation is switched to `flex_attention` (logged); an explicit `eager` is kept;
* the chunked loss needs the model's LM head as a module and `logits_to_keep` (`model.adapter`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .compute.attention import CUSTOM_MASK_IMPLEMENTATIONS
from .model.adapter import ModelFacts, ModelFactsCache, unsupported_reason, unwrap_model
from .batch.packing import BatchLayout

logger = logging.getLogger("merlina_orpo_plugin.speed")


@dataclass(frozen=True)
class SpeedPlan:
    """Decided once per trainer: the batch layout its collators build, the attention implementation
    the model runs it with and the loss chunk size; ``notes`` are the logged decisions. ``facts`` keeps
    the model's `model.adapter.ModelFacts` (`model_facts`), found at the first step on the model as
    wrapped then (DDP, FSDP, DeepSpeed, PEFT), so no later step walks the model's modules."""

    layout: BatchLayout
    loss_chunk_size: int
    attention: str | None = None
    fallbacks: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    facts: ModelFactsCache = field(default_factory=ModelFactsCache, compare=False, repr=False)

    def model_facts(self, model: torch.nn.Module) -> ModelFacts:
        """``model``'s facts for this plan (the head's too where the loss is chunked), found once per model."""
        return self.facts.of(model, chunked=self.loss_chunk_size > 0)

    @property
    def prefix_sharing(self) -> bool:
        return self.layout.prefix_sharing

    @property
    def padding_free(self) -> bool:
        return self.layout.padding_free


def plan_speed(
    model: torch.nn.Module,
    *,
    prefix_sharing: bool,
    padding_free: bool,
    loss_chunk_size: int,
    max_length: int | None,
    flex_attention: bool = False,
    device_type: str = "cpu",
) -> SpeedPlan:
    """The features asked for that ``model`` can use, with the reason for each one turned off.

    With ``flex_attention`` on a ``"cuda"`` device, a model running `sdpa` or a flash-attention
    kernel is switched to FlexAttention for the shared / packed layouts (`use_flex_attention`).
    """
    fallbacks, notes = [], []
    config = unwrap_model(model).config
    if getattr(config, "is_encoder_decoder", False):
        return _encoder_decoder_plan(model, config, loss_chunk_size)
    if (prefix_sharing or padding_free) and flex_attention and device_type == "cuda":
        note = use_flex_attention(model)
        (notes if note.startswith("attention:") else fallbacks).append(note)
    if prefix_sharing or padding_free:
        reason = _custom_mask_blocker(config, max_length)
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
    attention = getattr(config, "_attn_implementation", None)
    return _logged(SpeedPlan(BatchLayout(prefix_sharing, padding_free), loss_chunk_size, attention,
                             tuple(fallbacks), tuple(notes)))


def _logged(plan: SpeedPlan) -> SpeedPlan:
    for note in plan.notes:
        logger.info("ORPO speed plan: %s", note)
    for note in plan.fallbacks:
        logger.warning("ORPO speed feature %s (falling back to the padded, unchunked path)", note)
    return plan


def _encoder_decoder_plan(model: torch.nn.Module, config, loss_chunk_size: int) -> SpeedPlan:
    """Encoder-decoder models: the encoder reads each prompt once (the shared prompt's saving, built in),
    decoder rows are padded, and the loss is scored on the model's own logits."""
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        raise ValueError(f"{type(unwrap_model(model)).__name__}'s config has no `decoder_start_token_id`, which the "
                         "decoder inputs start with; set it (usually the pad token id)")
    notes = ["encoder-decoder model: each prompt is encoded once for both answers; decoder rows are padded"]
    fallbacks = []
    if loss_chunk_size and loss_chunk_size > 0:
        fallbacks.append(f"loss_chunk_size off: {unsupported_reason(model) or 'encoder-decoder forwards return every logit'}")
    return _logged(SpeedPlan(BatchLayout(decoder_start=int(start)), 0, getattr(config, "_attn_implementation", None),
                             tuple(fallbacks), tuple(notes)))


#: Implementations `use_flex_attention` replaces: sdpa computes every block of a dense mask, and
#: flash-attention kernels take no custom mask at all. `eager` is kept: it is chosen on purpose.
_REPLACED_BY_FLEX = ("sdpa", "flash_attention_2", "flash_attention_3")


def use_flex_attention(model: torch.nn.Module) -> str:
    """Switch ``model`` to FlexAttention if it can run it; a note saying what happened and why."""
    base = unwrap_model(model)
    current = getattr(base.config, "_attn_implementation", None)
    if current == "flex_attention":
        return "attention: flex_attention (the model's own)"
    if current not in _REPLACED_BY_FLEX and not str(current).startswith("kernels-community/flash"):
        return f"flex_attention not used: the model asks for {current!r} attention, kept as chosen"
    if not getattr(base, "_supports_flex_attn", False):
        return f"flex_attention not used: {type(base).__name__} does not support FlexAttention"
    try:
        base.set_attn_implementation("flex_attention")
    except (ImportError, ValueError, RuntimeError) as error:
        return f"flex_attention not used: switching {current!r} failed ({error})"
    return (f"attention: flex_attention instead of {current!r}, so the masked blocks of the shared-prompt / "
            "packed rows are skipped")


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
