"""Every ORPO option, once: its name, type, default, bounds, help, and where it can be set.

`ORPOConfig` (Python), the Axolotl YAML schema (`integration/args.py`), the training arguments the
plugin hands Axolotl's trainer (`integration/trainer.py`) and `ORPOSettings`, what the trainer reads,
are all built from `OPTIONS`; `check_options` is the one validator every entry point calls, so a bad
value gets the same message from YAML and from Python. A YAML config is read through `yaml_values` /
`yaml_settings` only: an option's `merlina_` key, or the Axolotl keys its row names (`axolotl_keys`).
The length rule (how far a long prompt may be cut) is `prompt_floor`, used by every tokenisation path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, make_dataclass
from typing import Any

from .schedules import SCHEDULES

PYTHON, YAML, BOTH = "python", "yaml", "both"


@dataclass(frozen=True)
class Option:
    """One option. ``where``: set from Python (`ORPOConfig`), from YAML or both.

    In YAML an option is its ``merlina_<name>`` key, unless ``axolotl_keys`` names keys Axolotl's own
    schema already owns (dotted: nested, ``trl.beta``): then it is read from those (any may be set; set
    ones must agree) and has no key of the plugin's. ``minimum`` bounds a number (None: unbounded);
    ``nullable`` admits None.
    """

    name: str
    type: type
    default: Any
    help: str
    where: str = BOTH
    minimum: float | None = None
    nullable: bool = False
    axolotl_keys: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()

    @property
    def annotation(self) -> Any:
        """The field type of the option in the dataclasses and models built from the table."""
        return self.type | None if self.nullable else self.type

    @property
    def yaml_key(self) -> str | None:
        """The plugin's YAML key (None: Python only, or carried by ``axolotl_keys``)."""
        if self.where == PYTHON or self.axolotl_keys:
            return None
        return f"merlina_{self.name}"

    @property
    def yaml_hint(self) -> str:
        """The Axolotl keys that carry the option, as messages list them: "`a`, `b` or `c`"."""
        keys = [f"`{key}`" for key in self.axolotl_keys]
        return " or ".join(filter(None, (", ".join(keys[:-1]), *keys[-1:])))

    @property
    def spelled(self) -> str:
        """How messages name the option: both spellings where both exist."""
        if self.where == PYTHON:
            return f"`{self.name}`"
        yaml = f"`{self.yaml_key}`" if self.yaml_key else self.yaml_hint
        return f"`{self.name}` (YAML: {yaml})" if self.where == BOTH else yaml


OPTIONS: tuple[Option, ...] = (
    Option("beta", float, 0.1, minimum=0, axolotl_keys=("orpo_alpha", "rl_beta", "trl.beta"),
           help="lambda of the paper (`alpha` in its code, `orpo_alpha` in Axolotl): loss = nll - "
                "beta * mean(logsigmoid(log_odds))."),
    Option("beta_schedule", str, "constant", choices=SCHEDULES,
           help="How beta moves by optimizer step, after `beta_warmup_steps` of linear warmup from 0: `constant` "
                "(beta), `linear` or `cosine` from `beta` to `beta_end`. Logged as `beta`."),
    Option("beta_end", float, None, minimum=0, nullable=True,
           help="Where a `linear` or `cosine` beta schedule ends, at the last optimizer step."),
    Option("beta_warmup_steps", int, 0, minimum=0,
           help="Optimizer steps over which beta rises linearly from 0 before its schedule."),
    Option("max_length", int, 1024, minimum=1, nullable=True, axolotl_keys=("sequence_len",),
           help="Longest prompt + completion, in tokens; longer pairs are truncated, never dropped. None: no limit."),
    Option("max_prompt_length", int, None, minimum=1, nullable=True,
           help="Shortest a prompt is cut to (from the left) when a pair is over `max_length`; TRL never cuts "
                "the prompt. None: half of `max_length`."),
    Option("max_completion_length", int, None, minimum=1, nullable=True,
           help="Longest completion, in tokens. None: whatever room the prompt leaves under `max_length`."),
    Option("nll_include_prompt", bool, True,
           help="True: the SFT term is the token-mean NLL over prompt + chosen (the paper's code, TRL, `rl: orpo`). "
                "False: over the chosen completion only."),
    Option("disable_dropout", bool, True, help="Set every dropout probability in the model to 0 (TRL's default)."),
    Option("prefix_sharing", bool, True,
           help="Compute each prompt once: one [prompt, chosen, rejected] sequence per pair under a mask that "
                "hides the chosen tokens from the rejected ones. Off, with the reason logged, where the "
                "attention implementation cannot take the mask."),
    Option("padding_free", bool, True,
           help="Pack whole pairs several per row (positions restart per pair) so almost no padding is computed; "
                "same conditions as `prefix_sharing`."),
    Option("flex_attention", bool, True,
           help="On CUDA, run the shared-prompt / packed layouts on FlexAttention, which skips fully masked "
                "blocks: a model loaded with `sdpa` or flash-attention is switched (logged); `eager` is kept. "
                "False: keep the model's attention (flash-attention then turns the two layouts off)."),
    Option("loss_chunk_size", int, 512, minimum=0,
           help="Log-probs from the hidden states this many tokens at a time, so the [tokens, vocab] logits never "
                "exist at once. 0: the model's full logits."),
    Option("on_nonfinite", str, "stop", choices=("stop", "skip"),
           help="A NaN/Inf training loss or gradient norm: `stop` raises, naming the step, the batch's rows and the "
                "loss terms; `skip` skips that optimizer step (weights and optimizer state untouched) and logs "
                "`nonfinite_skipped_steps`. Never hidden (see `nonfinite`)."),
    Option("generate_during_eval", bool, False,
           help="At each evaluation, sample the policy on the first `num_generation_samples` eval prompts and log "
                "prompt, chosen, rejected, the sample and its mean log-prob: a JSONL in `output_dir`, a W&B table, "
                "TensorBoard text. YAML: Axolotl's `generate_samples: true` or `eval_table_size: N` also turn it on."),
    Option("num_generation_samples", int, 4, minimum=1,
           help="Eval prompts sampled at each evaluation (Axolotl's `num_generation_samples` / `eval_table_size`)."),
    Option("generation_max_new_tokens", int, 128, minimum=1,
           help="Longest sample, in tokens (Axolotl's `generation_max_new_tokens` / `eval_max_new_tokens`)."),
    Option("generation_temperature", float, 1.0, minimum=0.01,
           help="Sampling temperature of those samples (Axolotl's `generation_temperature`)."),
    Option("skip_bad_rows", bool, False, where=YAML,
           help="Skip malformed rows (counted, first examples reported) instead of stopping preprocessing."),
    # TRL's own fields, for Python scripts that switch from `trl.experimental.orpo.ORPOConfig`.
    Option("padding_value", int, None, where=PYTHON, minimum=0, nullable=True,
           help="Token id used to pad `input_ids`. None: the tokenizer's pad token (else EOS)."),
    Option("dataset_num_proc", int, None, where=PYTHON, minimum=1, nullable=True,
           help="Processes used to validate and tokenise the datasets."),
    Option("model_init_kwargs", dict, None, where=PYTHON, nullable=True,
           help="Keyword arguments for `from_pretrained` (`AutoModelForCausalLM`, or `AutoModelForSeq2SeqLM` for an "
                "encoder-decoder) when `model` is a string (a dict, or its JSON text)."),
    Option("trust_remote_code", bool, False, where=PYTHON,
           help="Allow models with custom code when `model` is a string (passed to `from_pretrained`)."),
    Option("is_encoder_decoder", bool, None, where=PYTHON, nullable=True,
           help="Whether `model`, given as a name, is an encoder-decoder (T5, BART); None: read from its config."),
)
BY_NAME = {option.name: option for option in OPTIONS}
#: The options set from both entry points (`ORPOSettings`, Axolotl's training arguments); the length
#: limits among them reach tokenisation through the arguments, the rest the trainer at run time.
TRAINER_OPTIONS = tuple(o for o in OPTIONS if o.where == BOTH)
#: The fields of `ORPOConfig`.
PYTHON_OPTIONS = tuple(o for o in OPTIONS if o.where != YAML)


def prompt_floor(max_length: int | None, max_prompt_length: int | None) -> int | None:
    """The length rule: how short a long pair's prompt may be cut. None (with no `max_length`): never cut."""
    if max_prompt_length is not None:
        return max_prompt_length
    return None if max_length is None else max(1, max_length // 2)


def check_options(values: Mapping[str, Any]) -> None:
    """ValueError naming the option (both spellings) for a value out of its type or bounds, or limits
    that contradict each other. ``values`` maps option names to values; missing names are not checked."""
    for name, value in values.items():
        option = BY_NAME.get(name)
        if option is not None:
            _check_value(option, value)
    if values.get("beta_schedule") in ("linear", "cosine") and values.get("beta_end") is None:
        raise ValueError(
            f"{BY_NAME['beta_schedule'].spelled} {values['beta_schedule']!r} moves beta towards "
            f"{BY_NAME['beta_end'].spelled}, which is not set"
        )
    max_length, prompt = values.get("max_length"), values.get("max_prompt_length")
    if max_length is not None and prompt is not None and prompt >= max_length:
        raise ValueError(
            f"{BY_NAME['max_prompt_length'].spelled} must be smaller than {BY_NAME['max_length'].spelled}, got "
            f"{prompt} and {max_length}: a prompt cut to it must leave room for the completions (unset, it is "
            "half of the limit)"
        )


def yaml_value(option: Option, cfg: Mapping[str, Any]) -> Any:
    """What a YAML config (raw or validated) sets ``option`` to; None where it does not set it.

    Read from the option's ``merlina_`` key, or from the Axolotl keys of its row: any of them may be
    set, and a ValueError lists them where set ones disagree.
    """
    if option.where == PYTHON:
        return None
    if option.yaml_key:
        return cfg.get(option.yaml_key)
    given = {key: value for key in option.axolotl_keys if (value := _lookup(cfg, key)) is not None}
    if len(set(given.values())) > 1:
        listed = ", ".join(f"`{key}: {value}`" for key, value in given.items())
        raise ValueError(f"conflicting ORPO {option.name}: {listed}; set one of them (they all set `{option.name}`)")
    return next(iter(given.values()), None)


def yaml_values(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The options a YAML config sets, by option name (unset ones left out), through `yaml_value`."""
    values = {option.name: yaml_value(option, cfg) for option in OPTIONS}
    return {name: value for name, value in values.items() if value is not None}


def yaml_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Every option YAML can set, by name: the config's value, else the table's default; checked by
    `check_options`, and an int given for a float option (``orpo_alpha: 1``) made a float."""
    values = {option.name: option.default for option in OPTIONS if option.where != PYTHON}
    values.update(yaml_values(cfg))
    check_options(values)
    return {name: float(value) if BY_NAME[name].type is float and type(value) is int else value
            for name, value in values.items()}


def _lookup(cfg: Any, dotted: str) -> Any:
    """``cfg["trl"]["beta"]`` for ``"trl.beta"``, through mappings or attributes; None where any part is missing."""
    value = cfg
    for part in dotted.split("."):
        if value is None:
            return None
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
    return value


def _check_value(option: Option, value: Any) -> None:
    if value is None:
        if option.nullable:
            return
        raise ValueError(f"{option.spelled} must be set, got None")
    if option.choices:
        if value not in option.choices:
            raise ValueError(f"{option.spelled} must be one of {', '.join(option.choices)}, got {value!r}")
        return
    if option.type is bool:
        ok = isinstance(value, bool)
    elif option.type is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif option.type is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:  # a dict option (its JSON text is parsed before the check)
        ok = isinstance(value, option.type)
    if not ok:
        raise ValueError(f"{option.spelled} must be a {option.type.__name__}, got {value!r}")
    if option.minimum is not None and value < option.minimum:
        raise ValueError(f"{option.spelled} must be >= {option.minimum:g}, got {value!r}")


def _settings_class():
    """`ORPOSettings`: the trainer-time options as a frozen dataclass, built from the table."""
    spec = [(o.name, Any, o.default) for o in TRAINER_OPTIONS]
    cls = make_dataclass("ORPOSettings", spec, frozen=True)
    cls.__module__ = __name__
    cls.__doc__ = "The options `ORPOTrainerMixin` reads, whichever entry point set them (see `OPTIONS`)."
    return cls


ORPOSettings = _settings_class()


def settings_from(source: Any, prefix: str = "") -> ORPOSettings:
    """`ORPOSettings` read from an object's attributes (``ORPOConfig``, or Axolotl's training arguments
    with ``prefix="merlina_"``); an attribute the object lacks keeps the table's default."""
    return ORPOSettings(**{f.name: getattr(source, prefix + f.name, f.default) for f in fields(ORPOSettings)})


def markdown_table(where: str) -> str:
    """The options set from ``where`` (`PYTHON` or `YAML`) as the README's table: key, default, meaning."""
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for option in OPTIONS:
        if where == PYTHON and option in PYTHON_OPTIONS:
            rows.append(f"| `{option.name}` | {option.default!r} | {option.help} |")
        elif where == YAML and option.yaml_key:
            rows.append(f"| `{option.yaml_key}` | `{_yaml_literal(option.default)}` | {option.help} |")
    return "\n".join(rows)


def _yaml_literal(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


if __name__ == "__main__":  # python -m merlina_orpo_plugin.options: the README's two option tables
    print(markdown_table(PYTHON), markdown_table(YAML), sep="\n\n")
