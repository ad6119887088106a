"""The model adapter: what the ORPO forward needs to know about a transformers model, and nothing else.

`find_model_facts` finds it once per wrapped model (`ModelFacts`; the speed plan keeps them in a
`ModelFactsCache`, found again when the model passed in changes), so a step walks no modules. It
unwraps DDP / DeepSpeed / PEFT wrappers, finds the LM head (called as a module, so LoRA on it,
tied embeddings and DeepSpeed ZeRO-3's gathering on module calls apply; under FSDP2 and ZeRO-3
`head_sharding` finds what `compute.head` must gather that the module hooks do not, how it calls a
head that is an FSDP2 unit without that unit's hooks and whether every rank's head calls must be
equal in number), reproduces the logit post-processing the model applies after its head, and says
why the chunked loss cannot run on a model. Nothing here runs the model or a kernel: `compute.forward`
and `compute.head` read the facts.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from .head_sharding import HeadSharding, find_head_sharding

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


@dataclass(frozen=True, eq=False)
class ModelFacts:
    """What the ORPO forward needs to know about one wrapped model, found once (`find_model_facts`).

    ``model``: a weak reference to the wrapped model they describe (DDP / DeepSpeed / FSDP / PEFT, as
    the trainer passes it), with its ``model_type`` (FSDP2 wraps in place, changing only the class).
    ``base``: the transformers model under the wrappers; ``encoder``: its encoder (encoder-decoder
    models); ``attention``: its attention implementation; ``mask_dtype``: the dtype of a custom
    attention mask (the first weight's, else the config's for k-bit weights). With ``chunked``
    (the chunked loss on), also ``head`` (the LM head), ``decoder`` (whose last hidden state the head
    scores), ``postprocess`` (`logit_postprocess`), ``head_trained`` (it has trainable weights),
    ``head_params`` (those weights) and ``sharding`` (`head_sharding.HeadSharding`); else None.
    The head's ``requires_grad`` flags are read here, so freezing the head later needs new facts.
    """

    model: weakref.ref
    model_type: type
    chunked: bool
    base: torch.nn.Module
    encoder: torch.nn.Module | None
    attention: str | None
    mask_dtype: torch.dtype
    head: torch.nn.Module | None = None
    decoder: torch.nn.Module | None = None
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None
    head_trained: bool = False
    head_params: tuple[torch.Tensor, ...] = ()
    sharding: HeadSharding | None = None

    @property
    def fuses(self) -> bool:
        """Whether the chunked loss can take the head's gradients in the forward (the fused mode): a trained
        head whole on this process (a frozen head needs no fusing; FSDP2 / ZeRO-3 shard the weights)."""
        return self.head_trained and self.sharding is not None and not self.sharding.sharded

    def describes(self, model: torch.nn.Module, chunked: bool) -> bool:
        """Whether these are the facts of ``model`` as it is now (same object, same class), for ``chunked``."""
        return self.model() is model and type(model) is self.model_type and self.chunked == chunked


def find_model_facts(model: torch.nn.Module, chunked: bool) -> ModelFacts:
    """The `ModelFacts` of the wrapped ``model``; with ``chunked``, one walk of its modules (`find_head_sharding`)."""
    base = unwrap_model(model)
    config = base.config
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None else None
    if dtype is None or not dtype.is_floating_point:  # k-bit weights: the mask follows the compute dtype
        dtype = getattr(config, "dtype", None) or torch.float32
    encoder = base.get_encoder() if getattr(config, "is_encoder_decoder", False) else None
    facts = dict(model=weakref.ref(model), model_type=type(model), chunked=chunked, base=base, encoder=encoder,
                 attention=getattr(config, "_attn_implementation", None), mask_dtype=dtype)
    if chunked:
        head = base.get_output_embeddings()
        params = tuple(p for p in head.parameters() if p.requires_grad)
        facts.update(head=head, decoder=base.get_decoder(), postprocess=logit_postprocess(config),
                     head_trained=bool(params), head_params=params, sharding=find_head_sharding(model, head))
    return ModelFacts(**facts)


class ModelFactsCache:
    """The `ModelFacts` of the last ``keep`` models passed in (training's wrapped model, evaluation's).

    A model not among them (another object, or re-wrapped in place) has its facts found anew.
    """

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._facts: list[ModelFacts] = []

    def of(self, model: torch.nn.Module, chunked: bool) -> ModelFacts:
        for facts in self._facts:
            if facts.describes(model, chunked):
                return facts
        facts = find_model_facts(model, chunked)
        self._facts = [facts, *self._facts[: self.keep - 1]]
        return facts

    def clear(self) -> None:
        self._facts = []
