"""`MerlinaORPOPlugin`: `rl: orpo_standalone` in Axolotl through its plugin hooks.

Axolotl's `rl` enum and RL builder cannot take a new trainer, so `register()` rewrites the raw
config before validation: `rl` becomes unset (the causal builder runs, passing the model, LoRA
already applied), the raw `datasets` entries are kept in `merlina_datasets` (the SFT schema would
drop their `field_*` keys), and the hooks below hand Axolotl the ORPO trainer, collator, datasets
and training arguments. Why this route: a new `rl` value fails Axolotl's enum, and an extended enum
passes validation but the RL builder raises "Unsupported RL" and hands a plugin trainer no model;
keeping `rl: orpo` and swapping the trainer gets TRL's `ORPOConfig` as arguments. README.md, "Use it
from Axolotl", says what a recipe sets.

Axolotl 0.21 also loads the plugin for EVERY config through this package's `axolotl.plugins` entry
point, so nothing here acts unless the config asks for `rl: orpo_standalone`: every hook returns None
for SFT and for Axolotl's own `rl` types, and `register` leaves their config untouched.
"""

from __future__ import annotations

import copy
import math
import os

from axolotl.integrations.base import BasePlugin

from ..trl_contract import set_init_seed
from .args import training_args
from .data_options import orpo_enabled

RL_NAME = "orpo_standalone"
#: Axolotl's sample-generation keys (the newer and the deprecated spelling) -> ours. Axolotl's own
#: callbacks for them expect SFT batches, so `register` moves them out of its sight.
_GENERATION_KEYS = {
    "generate_samples": "merlina_generate_during_eval",
    "num_generation_samples": "merlina_num_generation_samples",
    "eval_table_size": "merlina_num_generation_samples",
    "generation_max_new_tokens": "merlina_generation_max_new_tokens",
    "eval_max_new_tokens": "merlina_generation_max_new_tokens",
    "generation_temperature": "merlina_generation_temperature",
}
#: Keys of a `datasets:` entry that Axolotl's SFT schema understands and that do no SFT work.
_LOADER_KEYS = ("path", "name", "split", "data_files", "ds_type", "revision", "trust_remote_code")


class MerlinaORPOPlugin(BasePlugin):
    """`rl: orpo_standalone`. Axolotl 0.21 loads it by entry point; 0.19 needs
    `plugins: [merlina_orpo_plugin.MerlinaORPOPlugin]` (the entry point's name, so 0.21 loads it once)."""

    def __init__(self):
        super().__init__()
        self._orpo_config = False  # whether the config last given to `register` is an ORPO one
        self._full_determinism = False  # the raw key: Axolotl 0.19's schema drops `full_determinism`

    def get_input_args(self) -> str | None:
        """Our YAML keys join Axolotl's schema for an ORPO config only (`register` runs before validation)."""
        if not (self._orpo_config and self._is_primary()):
            return None
        return "merlina_orpo_plugin.integration.args.MerlinaORPOArgs"

    def get_training_args_mixin(self) -> str | None:
        """Merged once, when `axolotl.core.training_args` is first imported, before any config may be known:
        so for every config (fields with defaults that only our trainer reads)."""
        if not self._is_primary():
            return None
        return "merlina_orpo_plugin.integration.trainer.MerlinaTrainingArgsMixin"

    def register(self, cfg: dict) -> None:
        """Rewrite the raw config; runs per `load_cfg` and per rank, so it must be idempotent."""
        self._orpo_config = cfg.get("rl") == RL_NAME or orpo_enabled(cfg)
        if cfg.get("rl") != RL_NAME:
            return
        from ..checkpoints import resolve_resume

        self._full_determinism = bool(cfg.get("full_determinism"))
        resolve_resume(cfg)  # `resume_from_checkpoint: true` / auto-resume: the latest COMPLETE checkpoint
        for key in ("datasets", "test_datasets"):
            entries = cfg.get(key)
            if entries is not None and not isinstance(entries, list):
                raise ValueError(f"`{key}` must be a list of dataset entries, got {type(entries).__name__}")
        if not cfg.get("datasets"):
            raise ValueError("`rl: orpo_standalone` needs `datasets:` with at least one preference dataset")
        _set_process_environment()
        cfg["rl"] = None
        cfg["merlina_enabled"] = True
        cfg["merlina_datasets"] = copy.deepcopy(cfg["datasets"])
        cfg["datasets"] = [_loader_only(entry) for entry in cfg["datasets"]]
        if cfg.get("test_datasets"):
            cfg["merlina_test_datasets"] = copy.deepcopy(cfg["test_datasets"])
            cfg["test_datasets"] = [_loader_only(entry) for entry in cfg["test_datasets"]]
        if cfg.get("remove_unused_columns") is None:
            cfg["remove_unused_columns"] = False  # the causal builder's True would strip the rejected ids
        _move_generation_keys(cfg)

    def pre_model_load(self, cfg) -> None:
        """Seed before the model is built: Axolotl 0.19 seeds nothing before model and adapter load
        (transformers' Trainer seeds in its constructor, after the adapter exists)."""
        if self._active(cfg):
            seed_from_cfg(cfg, self._full_determinism)

    def pre_lora_load(self, cfg, model) -> None:
        """Seed again right before the adapter is drawn, as TRL 1.15+ does before PEFT: its init is then
        a function of `seed` alone, whatever the model build drew."""
        if self._active(cfg):
            seed_from_cfg(cfg, self._full_determinism)

    def load_datasets(self, cfg, preprocess: bool = False):
        if not self._active(cfg):
            return None
        from axolotl.common.datasets import TrainDatasetMeta
        from axolotl.loaders import load_tokenizer

        from .datasets import load_orpo_datasets

        if _is_multi_process_cpu():  # see _set_process_environment
            cfg.device_map = {"": "cpu"}
        tokenizer = load_tokenizer(cfg)
        train, evaluation, _summary = load_orpo_datasets(cfg, tokenizer)  # logs the summary line
        return TrainDatasetMeta(
            train_dataset=train, eval_dataset=evaluation, total_num_steps=total_num_steps(cfg, len(train))
        )

    def get_trainer_cls(self, cfg):
        if not self._active(cfg):
            return None
        from .trainer import AxolotlMerlinaORPOTrainer

        return AxolotlMerlinaORPOTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval: bool = False):
        if not self._active(cfg):
            return None
        from ..batch.collator import ORPODataCollator

        return ORPODataCollator, {}

    def get_training_args(self, cfg):
        if not self._active(cfg):
            return None
        args = {
            **training_args(cfg),
            "remove_unused_columns": False,
            # Axolotl turns this off; ORPO needs it so the NLL is one token mean over all ranks.
            "average_tokens_across_devices": True,
        }
        if self._full_determinism:
            args["full_determinism"] = True  # Axolotl 0.21 passes it itself; 0.19 does not know the key
        if _is_multi_process_cpu():
            args.update(use_cpu=True, ddp_backend="gloo")  # see _set_process_environment
        return args

    def _active(self, cfg) -> bool:
        return orpo_enabled(cfg) and self._is_primary()

    def _is_primary(self) -> bool:
        """Whether this instance speaks for the plugin. Axolotl keys its plugins by name: listing a second
        spelling (`merlina_orpo_plugin.integration.plugin.MerlinaORPOPlugin`) beside the entry point's
        gives two instances, and two would load the datasets twice (Axolotl raises) and add our schema
        twice (a duplicate base class). The first one Axolotl holds acts; one it does not hold acts alone."""
        from axolotl.integrations.base import PluginManager

        ours = [plugin for plugin in PluginManager().plugins.values() if isinstance(plugin, MerlinaORPOPlugin)]
        return not any(plugin is self for plugin in ours) or ours[0] is self


def total_num_steps(cfg, train_size: int) -> int:
    """Optimizer steps of the run: `max_steps` when > 0 (the Trainer ignores 0 and less), else
    epochs over the global batch (Axolotl's rule); `num_epochs: 0` stays 0."""
    if cfg.get("max_steps"):
        return int(cfg["max_steps"])
    epochs = 1 if cfg.get("num_epochs") is None else float(cfg["num_epochs"])
    return math.ceil(train_size * epochs / int(cfg["batch_size"]))


def seed_from_cfg(cfg, full_determinism: bool = False) -> None:
    """`trl_contract.set_init_seed` with the config's `seed` (Axolotl fills an unset one with 42)."""
    if cfg.get("seed") is not None:
        set_init_seed(int(cfg["seed"]), full_determinism)


def _set_process_environment() -> None:
    """What this process needs before anything else runs; `register` is the plugin's first call per process.

    Several CPU processes (torchrun + gloo) train as one data-parallel run only if accelerate knows
    it is on CPU: `AxolotlTrainer` resets accelerate's state before building its `Accelerator`, which
    then reads `ACCELERATE_USE_CPU` (without it every rank trains alone). The other half, the device
    map, is set in `load_datasets`: Axolotl writes `device_map: {"": LOCAL_RANK}` (read by
    `from_pretrained` as an accelerator index) after `register` and reads it before `pre_model_load`,
    so the dataset hook is the last one that can correct it.
    """
    if _is_multi_process_cpu():
        os.environ["ACCELERATE_USE_CPU"] = "true"


def _move_generation_keys(cfg: dict) -> None:
    """`generate_samples: true` or `eval_table_size: N` -> ORPO generations at evaluation (`generation.py`)."""
    if cfg.get("eval_table_size"):
        cfg.setdefault("merlina_generate_during_eval", True)
    for key, ours in _GENERATION_KEYS.items():
        value = cfg.pop(key, None)
        if value:  # unset, false or 0: Axolotl's "off"
            cfg.setdefault(ours, value)


def _is_multi_process_cpu() -> bool:
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _loader_only(entry) -> dict:
    """What Axolotl's SFT schema may see of a preference dataset entry: where to load it from."""
    if not isinstance(entry, dict) or not entry.get("path"):
        raise ValueError(f"each dataset entry needs a `path`, got {entry!r}")
    return {key: entry[key] for key in _LOADER_KEYS if key in entry}
