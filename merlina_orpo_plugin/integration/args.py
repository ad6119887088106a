"""The plugin's YAML options: a pydantic model built from `options.OPTIONS`, merged into Axolotl's schema.

Every key shares the `merlina_` prefix. Beta keeps Axolotl's existing keys (`orpo_alpha`, `rl_beta`,
`trl.beta`) and `sequence_len` is `max_length`. Values are checked by `options.check_options`, the same
validator `ORPOConfig` runs, so a bad value reads the same from YAML and from Python.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, create_model, model_validator

from ..options import BY_NAME, OPTIONS, TRAINER_OPTIONS, check_options, prompt_floor

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
        if option.yaml_key:  # beta and max_length come from Axolotl's own keys
            fields[option.yaml_key] = (option.annotation, Field(default=option.default, json_schema_extra={"description": option.help}))
    return fields


MerlinaORPOArgs = create_model("MerlinaORPOArgs", __base__=_ORPOArgsBase, __module__=__name__, **_yaml_fields())


def yaml_values(cfg: Any) -> dict[str, Any]:
    """The options a YAML config sets, by option name: `merlina_*` keys, beta and `sequence_len`."""
    values = {o.name: cfg.get(o.yaml_key) for o in OPTIONS if o.yaml_key and cfg.get(o.yaml_key) is not None}
    values["beta"] = resolve_beta(cfg)
    values["max_length"] = cfg.get("sequence_len")
    return values


def training_args(cfg: Any) -> dict[str, Any]:
    """The trainer-time options as `merlina_<name>` training arguments (`MerlinaTrainingArgsMixin`)."""
    values = yaml_values(cfg)
    return {f"merlina_{o.name}": values.get(o.name, o.default) for o in TRAINER_OPTIONS}


def resolve_beta(cfg: Any) -> float:
    """Beta from `orpo_alpha`, `rl_beta` or `trl.beta` (any may be set; set ones must agree)."""
    trl = cfg.get("trl") or {}
    given = {
        key: value
        for key, value in (("orpo_alpha", cfg.get("orpo_alpha")), ("rl_beta", cfg.get("rl_beta")),
                           ("trl.beta", trl.get("beta") if isinstance(trl, dict) else getattr(trl, "beta", None)))
        if value is not None
    }
    if len(set(given.values())) > 1:
        listed = ", ".join(f"`{k}: {v}`" for k, v in given.items())
        raise ValueError(f"conflicting ORPO beta: {listed}; set one of them (they mean the same lambda)")
    beta = next(iter(given.values()), BY_NAME["beta"].default)
    check_options({"beta": beta})
    return float(beta)


def max_prompt_length(cfg: Any) -> int | None:
    """How far a long prompt may be cut under this config (`options.prompt_floor`)."""
    return prompt_floor(cfg.get("sequence_len"), cfg.get("merlina_max_prompt_length"))


def is_encoder_decoder(cfg: Any) -> bool:
    """Whether the recipe's model is an encoder-decoder (T5, BART): its data are tokenised for the encoder
    and the decoder apart (`data.seq2seq`). Read from the model's config as Axolotl loads it."""
    if not cfg.get("base_model"):
        return False
    from axolotl.loaders.utils import load_model_config

    return bool(getattr(load_model_config(cfg), "is_encoder_decoder", False))
