"""The plugin's YAML options: one pydantic model merged into Axolotl's config schema.

Every key shares the `merlina_` prefix. Beta keeps Axolotl's existing keys (`orpo_alpha`,
`rl_beta`, `trl.beta`); `sequence_len` is the maximum sequence length.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

DEFAULT_BETA = 0.1

#: SFT-only options that would silently do nothing (or break) under ORPO, with the reason.
REFUSED_OPTIONS = {
    "sample_packing": "Axolotl's SFT packing would split ORPO pairs. Set `sample_packing: false`; "
    "`merlina_padding_free` (on by default) packs whole pairs instead.",
    "eval_sample_packing": "see `sample_packing`; set `eval_sample_packing: false`.",
    "eval_table_size": "it generates SFT prediction tables; remove it.",
    "do_causal_lm_eval": "it runs SFT perplexity metrics on a causal-LM eval set; remove it (ORPO logs eval_ metrics).",
    "do_bench_eval": "it runs an SFT multiple-choice benchmark; remove it.",
    "generate_samples": "it samples from SFT prompts; remove it.",
}


class MerlinaORPOArgs(BaseModel):
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
    merlina_max_prompt_length: int | None = Field(
        default=None,
        json_schema_extra={"description": "Shortest a prompt is cut to (from the left) when a pair is over "
                           "`sequence_len`. Default: half of `sequence_len`."},
    )
    merlina_max_completion_length: int | None = Field(
        default=None,
        json_schema_extra={"description": "Longest completion in tokens. Default: whatever room the prompt leaves."},
    )
    merlina_nll_include_prompt: bool = Field(
        default=True,
        json_schema_extra={"description": "SFT term over prompt + chosen tokens (paper, TRL, `rl: orpo`); "
                           "false: chosen completion only."},
    )
    merlina_disable_dropout: bool = Field(
        default=True,
        json_schema_extra={"description": "Zero all dropout (LoRA dropout included), as TRL's ORPO trainer does."},
    )
    merlina_prefix_sharing: bool = Field(
        default=True,
        json_schema_extra={"description": "Compute each prompt once ([prompt, chosen, rejected] in one "
                           "sequence under a mask). Needs `attn_implementation` sdpa, eager or flex_attention; "
                           "otherwise off, with the reason logged."},
    )
    merlina_padding_free: bool = Field(
        default=True,
        json_schema_extra={"description": "Pack whole pairs several per row so almost no padding is "
                           "computed; same conditions as `merlina_prefix_sharing`."},
    )
    merlina_loss_chunk_size: int = Field(
        default=512,
        ge=0,
        json_schema_extra={"description": "Tokens per chunk of the vocabulary projection in the loss (the "
                           "full logits never exist); 0: the model's full logits."},
    )
    merlina_skip_bad_rows: bool = Field(
        default=False,
        json_schema_extra={"description": "Skip malformed rows instead of stopping; the count and the first "
                           "examples are reported."},
    )

    @model_validator(mode="before")
    @classmethod
    def check_orpo_options(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("merlina_enabled"):
            return data
        resolve_beta(data)
        for key, reason in REFUSED_OPTIONS.items():
            if data.get(key):
                raise ValueError(f"`{key}` does not work with `rl: orpo_standalone`: {reason}")
        for key in ("merlina_max_prompt_length", "merlina_max_completion_length"):
            value = data.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{key}` must be a positive number of tokens, got {value!r}")
        for entry in [*(data.get("merlina_datasets") or []), *(data.get("merlina_test_datasets") or [])]:
            from ..strategies import get_strategy

            get_strategy(entry)  # an unknown type or a bad field mapping fails here, listing the valid ones
        prompt, sequence_len = data.get("merlina_max_prompt_length"), data.get("sequence_len")
        if prompt is not None and sequence_len and prompt >= sequence_len:
            raise ValueError(
                f"`merlina_max_prompt_length` ({prompt}) must be smaller than `sequence_len` ({sequence_len}); "
                "lower it or raise `sequence_len`"
            )
        return data


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
    beta = next(iter(given.values()), DEFAULT_BETA)
    if not isinstance(beta, (int, float)) or beta < 0:
        raise ValueError(f"ORPO beta (`orpo_alpha`/`rl_beta`) must be a number >= 0, got {beta!r}")
    return float(beta)


def max_prompt_length(cfg: Any) -> int | None:
    """`merlina_max_prompt_length`, defaulting to half of `sequence_len`."""
    if cfg.get("merlina_max_prompt_length") is not None:
        return int(cfg["merlina_max_prompt_length"])
    sequence_len = cfg.get("sequence_len")
    return int(sequence_len) // 2 if sequence_len else None
