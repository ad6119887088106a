"""The plugin's YAML options: a pydantic model built from `options.OPTIONS`, merged into Axolotl's schema.

Every key shares the `merlina_` prefix. An option whose row names `axolotl_keys` (beta: `orpo_alpha`,
`rl_beta`, `trl.beta`; `max_length`: `sequence_len`) is read from those keys, which Axolotl's schema
owns, so it is no field here. A config is read through `options.yaml_values` / `yaml_settings` only, and
checked by `options.check_options`, the same validator `ORPOConfig` runs, so a bad value reads the same
from YAML and from Python.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, create_model, model_validator

from ..options import OPTIONS, TRAINER_OPTIONS, check_options, yaml_settings, yaml_values

#: SFT-only options that would silently do nothing (or break) under ORPO, with the reason.
REFUSED_OPTIONS = {
    "sample_packing": "Axolotl's SFT packing would split ORPO pairs. Set `sample_packing: false`; "
    "`merlina_padding_free` (on by default) packs whole pairs instead.",
    "eval_sample_packing": "see `sample_packing`; set `eval_sample_packing: false`.",
    "do_causal_lm_eval": "it runs SFT perplexity metrics on a causal-LM eval set; remove it (ORPO logs eval_ metrics).",
    "do_bench_eval": "it runs an SFT multiple-choice benchmark; remove it.",
}


class _ORPOArgsBase(BaseModel):
    """Options of `merlina_orpo_plugin.MerlinaORPOPlugin`, active with `rl: orpo_standalone`."""

    merlina_enabled: bool = Field(
        default=False,
        json_schema_extra={"description": "Set by the plugin when `rl: orpo_standalone`; not a user option."},
    )
    merlina_datasets: list[dict[str, Any]] | None = Field(
        default=None,
        json_schema_extra={"description": "The `datasets` entries as written (Axolotl's SFT schema drops "
                           "`field_*` keys); filled by the plugin, not a user option."},
    )
    merlina_test_datasets: list[dict[str, Any]] | None = Field(
        default=None,
        json_schema_extra={"description": "The `test_datasets` entries as written; filled by the plugin."},
    )

    @model_validator(mode="before")
    @classmethod
    def check_orpo_options(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("merlina_enabled"):
            return data
        for key, reason in REFUSED_OPTIONS.items():
            if data.get(key):
                raise ValueError(f"`{key}` does not work with `rl: orpo_standalone`: {reason}")
        check_options(yaml_values(data))
        for entry in [*(data.get("merlina_datasets") or []), *(data.get("merlina_test_datasets") or [])]:
            from ..strategies import get_strategy

            get_strategy(entry)  # an unknown type or a bad field mapping fails here, listing the valid ones
        return data


def _yaml_fields() -> dict[str, Any]:
    fields = {}
    for option in OPTIONS:
        if option.yaml_key:  # none for an option carried by `axolotl_keys`: Axolotl owns those
            fields[option.yaml_key] = (option.annotation, Field(default=option.default, json_schema_extra={"description": option.help}))
    return fields


MerlinaORPOArgs = create_model("MerlinaORPOArgs", __base__=_ORPOArgsBase, __module__=__name__, **_yaml_fields())


def training_args(cfg: Any) -> dict[str, Any]:
    """The trainer-time options as `merlina_<name>` training arguments (`MerlinaTrainingArgsMixin`)."""
    values = yaml_settings(cfg)
    return {f"merlina_{o.name}": values[o.name] for o in TRAINER_OPTIONS}


def resolve_beta(cfg: Any) -> float:
    """Beta from the Axolotl keys of its row (`orpo_alpha`, `rl_beta` or `trl.beta`; set ones must agree)."""
    return yaml_settings(cfg)["beta"]
