"""What preparing the preference data reads from a config, resolved once: `DataOptions.from_cfg`.

`load_orpo_datasets` (`axolotl train`), `orpo-preview` and `orpo-eval` build one `DataOptions` at
their entry point and hand it down (`prepare_entry`, `tokenise_pairs`, `dataset_hash`); nothing below
them reads a config key. The table's options come through `options.yaml_settings` (their `merlina_`
keys, `sequence_len`); the entries are those `register` kept (`merlina_datasets`,
`merlina_test_datasets`), and `orpo_enabled` reads the mark it left (`merlina_enabled`): no other module
reads a `merlina_` key of a config. The rest are Axolotl's own data keys; the model's config is read
here, once.
Importing this module imports neither Axolotl nor `datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..options import BY_NAME, prompt_floor, yaml_settings

DEFAULT_PREPARED_PATH = "last_run_prepared"
DEFAULT_SEED = 42  # the split and shuffle seed when the config sets none (`seed: 0` is a seed)
#: Entries of at most this many rows are tokenised in this process: starting workers costs more.
MULTIPROCESS_ROWS = 10_000


@dataclass(frozen=True)
class DataOptions:
    """The data side of a config, resolved: entries, length limits, row policy, split, cache, model kind."""

    train_entries: tuple[dict, ...] = ()
    test_entries: tuple[dict, ...] = ()
    max_length: int | None = BY_NAME["max_length"].default
    max_prompt_length: int | None = None  # the option as set; `prompt_floor` is the rule applied
    max_completion_length: int | None = None
    skip_bad_rows: bool = False
    num_proc: int | None = None
    encoder_decoder: bool = False
    val_set_size: float | None = None
    seed: int = DEFAULT_SEED
    shuffle: bool = True
    prepared_path: str = DEFAULT_PREPARED_PATH
    use_auth_token: bool = False

    @classmethod
    def from_cfg(cls, cfg: Any) -> DataOptions:
        """Resolved from a (validated) config; reads the model's config when `base_model` is set."""
        settings = yaml_settings(cfg)
        seed, num_proc = cfg.get("seed"), cfg.get("dataset_num_proc")
        if num_proc is None:  # a raw config: Axolotl's validator moves the deprecated key to the new one
            num_proc = cfg.get("dataset_processes")
        return cls(
            train_entries=tuple(cfg.get("merlina_datasets") or ()),
            test_entries=tuple(cfg.get("merlina_test_datasets") or ()),
            max_length=settings["max_length"],
            max_prompt_length=settings["max_prompt_length"],
            max_completion_length=settings["max_completion_length"],
            skip_bad_rows=bool(settings["skip_bad_rows"]),
            num_proc=num_proc,
            encoder_decoder=is_encoder_decoder(cfg),
            val_set_size=cfg.get("val_set_size"),
            seed=DEFAULT_SEED if seed is None else int(seed),
            shuffle=cfg.get("shuffle_merged_datasets", True) is not False,
            prepared_path=str(cfg.get("dataset_prepared_path") or DEFAULT_PREPARED_PATH),
            use_auth_token=bool(cfg.get("hf_use_auth_token")),
        )

    @property
    def prompt_floor(self) -> int | None:
        """How short a long pair's prompt may be cut (`options.prompt_floor`)."""
        return prompt_floor(self.max_length, self.max_prompt_length)

    def num_proc_for(self, rows: int) -> int | None:
        """Processes to tokenise ``rows`` rows with: the config's, above `MULTIPROCESS_ROWS` rows only. One is
        None: `Dataset.map(num_proc=1)` forks a worker (pickling, ~300 MiB more) for no parallelism."""
        return self.num_proc if rows > MULTIPROCESS_ROWS and (self.num_proc or 0) > 1 else None


def orpo_enabled(cfg: Any) -> bool:
    """Whether `register` turned this config into an `rl: orpo_standalone` one (the mark it leaves beside
    the entries it keeps, read here with them)."""
    return bool(cfg.get("merlina_enabled"))


def is_encoder_decoder(cfg: Any) -> bool:
    """Whether the recipe's model is an encoder-decoder (T5, BART): its data are tokenised for the encoder
    and the decoder apart (`data.seq2seq`). Read from the model's config as Axolotl loads it."""
    if not cfg.get("base_model"):
        return False
    from axolotl.loaders.utils import load_model_config

    return bool(getattr(load_model_config(cfg), "is_encoder_decoder", False))
