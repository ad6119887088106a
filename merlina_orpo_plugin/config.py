"""`ORPOConfig`: the training arguments of the standalone ORPO trainer, built from `options.OPTIONS`.

Field names follow TRL 1.9's `trl.experimental.orpo.ORPOConfig`, and so do the defaults that
differ from `transformers.TrainingArguments`, so `from trl.experimental.orpo import ORPOConfig`
becomes `from merlina_orpo_plugin import ORPOConfig` with the same meaning. The ORPO fields, their
defaults and bounds live in the options table; this module only turns them into a dataclass.
"""

from __future__ import annotations

import json
from dataclasses import field, make_dataclass
from typing import Any

from transformers import TrainingArguments

from .options import PYTHON_OPTIONS, check_options

#: Defaults TRL 1.9 changes from `TrainingArguments` (its `_BaseConfig` and `ORPOConfig`), and ours.
_TRAINING_DEFAULTS = (
    ("learning_rate", float, 1e-6, "Initial AdamW learning rate (TRL's ORPO default; 5e-6 to 8e-6 is usual on 7B models)."),
    ("logging_steps", float, 10, "Log every N optimizer steps (a float below 1: that fraction of the run)."),
    ("gradient_checkpointing", bool, True, "Recompute activations in backward to save memory (TRL's default)."),
    ("bf16", bool | None, None,
     "bfloat16 mixed precision; None: on unless `fp16` is set or the device lacks it (TRL's default fails there)."),
    ("remove_unused_columns", bool, False, "Kept False: the ORPO collator reads the `*_input_ids` columns itself."),
)


def _fields() -> list[tuple[str, Any, Any]]:
    spec = [(name, kind, field(default=default, metadata={"help": text})) for name, kind, default, text in _TRAINING_DEFAULTS]
    for option in PYTHON_OPTIONS:
        kind = option.annotation
        if option.type is dict:  # the JSON text too, parsed in `__post_init__`
            kind = dict | str | None
        spec.append((option.name, kind, field(default=option.default, metadata={"help": option.help})))
    return spec


def _bf16_supported(use_cpu: bool) -> bool:
    import torch

    return use_cpu or (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _zero3(args) -> bool:
    config = getattr(args, "hf_deepspeed_config", None)
    return bool(config is not None and config.is_zero3())


def _post_init(self) -> None:
    if self.bf16 is None:  # TRL: bf16 unless fp16; here also not where it would be refused (a CPU-only
        self.bf16 = not self.fp16 and _bf16_supported(self.use_cpu)  # machine without `use_cpu`, old GPUs)
    if isinstance(self.model_init_kwargs, str):  # TRL accepts the JSON text (command lines)
        self.model_init_kwargs = json.loads(self.model_init_kwargs)
    TrainingArguments.__post_init__(self)
    if self.gradient_checkpointing and self.gradient_checkpointing_kwargs is None and _zero3(self):
        # transformers 5 recomputes non-reentrantly, inside backward, where ZeRO-3 has already
        # partitioned the layer's weights again ("Recomputed values ... different metadata").
        self.gradient_checkpointing_kwargs = {"use_reentrant": True}
        if hasattr(self, "activation_checkpointing_kwargs"):  # newer transformers (5.25) read only this name
            self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs
    check_options({option.name: getattr(self, option.name) for option in PYTHON_OPTIONS})


ORPOConfig = make_dataclass("ORPOConfig", _fields(), bases=(TrainingArguments,), namespace={"__post_init__": _post_init})
ORPOConfig.__module__ = __name__  # pickled into checkpoints (training_args.bin): must be importable from here
ORPOConfig.__doc__ = """Arguments of `MerlinaORPOTrainer`, on top of `transformers.TrainingArguments`.

ORPO fields (see `merlina_orpo_plugin.options.OPTIONS` for each default and meaning): """ + ", ".join(
    f"`{o.name}`" for o in PYTHON_OPTIONS
) + """. Defaults that differ from `TrainingArguments`, as in TRL 1.9: `learning_rate` 1e-6,
`logging_steps` 10, `gradient_checkpointing` True, `bf16` True unless `fp16`, and
`remove_unused_columns` False.
"""
