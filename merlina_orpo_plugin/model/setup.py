"""Turn what the user passed as `model` into the module the trainer optimises (PEFT, k-bit, dropout)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

logger = logging.getLogger("merlina_orpo_plugin.model.setup")


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but keep the trainer usable without it
        return False
    return isinstance(model, PeftModel)


def is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


# bitsandbytes (0.50) repacks a 4-bit weight for its fast CPU kernel in blocks of this many output rows.
_BNB_CPU_PACK_BLOCK = 32


def unpackable_4bit_layers(model: torch.nn.Module) -> list[str]:
    """4-bit linear layers that bitsandbytes' packed CPU kernel will refuse, by name with their sizes.

    On CPUs with AVX512-BF16 (and AMX), bitsandbytes runs a 4-bit layer's no-grad forward (evaluation)
    through a kernel that first repacks the weight in blocks of 32 output rows, and asserts "N must be
    divisible by block_n" otherwise. Real checkpoints have sizes in multiples of 128; toy models with
    few narrow heads do not. Training forwards take another path, so only evaluation crashes.
    """
    names = []
    for name, module in model.named_modules():
        if not getattr(module, "support_avx512bf16_for_cpu", False):
            continue  # not a bitsandbytes 4-bit layer, or a CPU without the packed kernel
        weight = getattr(module, "weight", None)
        if weight is None or weight.device.type != "cpu":
            continue
        if module.out_features % _BNB_CPU_PACK_BLOCK or module.in_features % 2:
            names.append(f"{name} ({module.in_features} -> {module.out_features})")
    return names


def check_4bit_cpu_layers(model: torch.nn.Module, will_evaluate: bool) -> None:
    """Raise (when evaluation will run) or warn about 4-bit layers the packed CPU kernel refuses."""
    layers = unpackable_4bit_layers(model)
    if not layers:
        return
    message = (
        f"{len(layers)} 4-bit layer(s) have an output size that is not a multiple of {_BNB_CPU_PACK_BLOCK}, "
        f"which bitsandbytes' packed CPU kernel (this CPU has AVX512-BF16) cannot evaluate: "
        f"{', '.join(layers[:4])}{' ...' if len(layers) > 4 else ''}. Use a model whose hidden, intermediate "
        "and heads x head_dim sizes are multiples of 128 (every released checkpoint is), or run on a GPU"
    )
    if will_evaluate:
        raise ValueError(message)
    logger.warning("%s; training works, evaluation would fail", message)


def disable_dropout_in_model(model: torch.nn.Module) -> None:
    """Dropout makes the chosen and rejected log-probs of one pair noisy in different ways.

    Besides `nn.Dropout` modules, attention layers of Llama-like models keep a float
    ``attention_dropout`` that they pass to the attention kernel in training mode.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def _auto_class(name: str, args, init_kwargs: dict):
    """`AutoModelForSeq2SeqLM` for encoder-decoder checkpoints (or `is_encoder_decoder=True`), else causal."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    encoder_decoder = getattr(args, "is_encoder_decoder", None)
    if encoder_decoder is None:
        trust = init_kwargs.get("trust_remote_code", False)
        encoder_decoder = bool(getattr(AutoConfig.from_pretrained(name, trust_remote_code=trust), "is_encoder_decoder", False))
    return AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM


def loading_kwargs(args) -> dict:
    """``from_pretrained`` keyword arguments for a ``model`` given as a string, as TRL builds them.

    When ``model_init_kwargs`` is set, ``dtype`` defaults to "auto" (a name such as "bfloat16" becomes
    ``torch.bfloat16``; a value of another type is a ValueError, an unknown name an AttributeError, as in
    TRL) and ``device_map`` to "auto", in one process only (TRL: always): under ``accelerate launch``
    each process trains its own replica, which "auto" would spread over every visible GPU.
    ``trust_remote_code`` comes from the config unless given.
    """
    kwargs = dict(args.model_init_kwargs) if args.model_init_kwargs is not None else {}
    if args.model_init_kwargs is not None:
        dtype = kwargs.get("dtype", "auto")
        if dtype is not None:
            if isinstance(dtype, str) and dtype != "auto":
                dtype = getattr(torch, dtype)
            if dtype != "auto" and not isinstance(dtype, torch.dtype):
                raise ValueError(f"`model_init_kwargs` `dtype` must be a torch.dtype, its name or 'auto': {dtype!r}")
            kwargs["dtype"] = dtype
        if "device_map" not in kwargs and _single_process():
            kwargs["device_map"] = "auto"
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    return kwargs


def _single_process() -> bool:
    from accelerate import PartialState

    return PartialState().num_processes == 1


def prepare_model(model: PreTrainedModel | str, args, peft_config=None) -> torch.nn.Module:
    """Load ``model`` if it is a name or path, wrap it with ``peft_config``, apply ``args.disable_dropout``.

    A 4-/8-bit model gets `peft.prepare_model_for_kbit_training` first (frozen base, float32 norms,
    input grads for checkpointing), as TRL and Axolotl do for QLoRA.
    """
    if isinstance(model, str):
        init_kwargs = loading_kwargs(args)
        model = _auto_class(model, args, init_kwargs).from_pretrained(model, **init_kwargs)
    elif args.model_init_kwargs is not None:  # TRL's check and exception class
        raise ValueError("`model_init_kwargs` only applies when `model` is a string; the model is already loaded")
    if model is None:
        raise ValueError("`model` is required: a PreTrainedModel, a PeftModel, or a name/path to load")

    if peft_config is not None:
        from peft import PeftConfig, get_peft_model, prepare_model_for_kbit_training

        if not isinstance(peft_config, PeftConfig):
            raise TypeError(f"`peft_config` must be a peft.PeftConfig (e.g. LoraConfig), got {type(peft_config).__name__}")
        if is_peft_model(model):
            raise ValueError(
                "`model` is already a PeftModel and a `peft_config` was passed too: pass one or the other "
                "(merge and unload the existing adapter first to stack a new one)"
            )
        from transformers.trainer_utils import set_seed

        set_seed(args.seed)  # PEFT draws the adapter weights: TRL 1.15+ seeds first, for reproducible runs
        if is_quantized(model):
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=args.gradient_checkpointing,
                gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
            )
        model = get_peft_model(model, peft_config)

    if args.gradient_checkpointing and is_peft_model(model) and hasattr(model, "enable_input_require_grads"):
        # With a frozen embedding nothing before the first checkpointed block requires grad, so
        # reentrant checkpointing would return no gradient for the adapters.
        model.enable_input_require_grads()
    if args.disable_dropout:
        disable_dropout_in_model(model)
    return model
