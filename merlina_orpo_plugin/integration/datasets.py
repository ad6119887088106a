"""Preference datasets for `rl: orpo_standalone`: loaded, joined and split once, cached under a file lock.

Axolotl's loaders only know SFT and TRL's preference layouts, so the plugin owns the path: each
`datasets:` entry is read with Axolotl's own file/hub loader and turned into token ids by
`mapping.py` (strategy, one check per row, tokeniser); the entries are joined, split off for
`val_set_size` and shuffled by `seed`. The result is cached under `dataset_prepared_path` by a hash
of everything that changes the tokens (`prepared_cache.py`: written whole and renamed into place,
checked against its manifest on every load, rebuilt when damaged); one process builds it under a file
lock and the others (ranks, later `train` runs) load it. What is read from the config is resolved
once, into a `data_options.DataOptions`, which everything here takes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .. import __version__
from ..data import PreferenceDataStats
from ..data.fingerprint import code_sources, package_sources, source_text
from ..data.stats import IDENTICAL_NOTE
from . import LOG, data_options, mapping, prepared_cache
from .data_options import DataOptions

#: Where each prepared row came from (`with_provenance`); the trainer's batches ignore both columns.
SOURCE_COLUMN, SOURCE_ROW_COLUMN = "merlina_source", "merlina_source_row"


@dataclass(frozen=True)
class PreparedEntry:
    """One `datasets:` entry, tokenised: what was read, what came out, what was skipped and why."""

    source: str
    rows: int
    tokenised: datasets.Dataset
    stats: PreferenceDataStats
    skipped: list[tuple[int, str]]


def load_orpo_datasets(cfg, tokenizer) -> tuple[datasets.Dataset, datasets.Dataset | None, dict]:
    """(train, eval or None, summary) for the validated ``cfg`` (or its `DataOptions`, resolved once
    here otherwise), from the cache when it is there."""
    options = cfg if isinstance(cfg, DataOptions) else DataOptions.from_cfg(cfg)
    key = dataset_hash(options, tokenizer)
    target = Path(options.prepared_path) / f"merlina-orpo-{key}"
    loaded, summary = prepared_cache.load_or_build(target, key, lambda: _build(options, tokenizer))
    _log_summary(summary)
    return loaded["train"], loaded["eval"] if "eval" in loaded else None, summary


def _log_summary(summary: dict) -> None:
    totals = {key: sum(d[key] for d in summary["datasets"])
              for key in ("truncated_pairs", "skipped", "empty_completions", "identical_pairs")}
    identical = totals["identical_pairs"]
    LOG.log(
        logging.WARNING if identical else logging.INFO,
        "ORPO datasets: %d train pairs, %d eval pairs, %d truncated, %d skipped, %d empty completions "
        "(trained as the end token alone), %d pairs with identical chosen and rejected%s",
        summary["train_pairs"], summary["eval_pairs"], totals["truncated_pairs"], totals["skipped"],
        totals["empty_completions"], identical, f" ({IDENTICAL_NOTE})" if identical else "",
    )


def _build(options: DataOptions, tokenizer) -> tuple[dict[str, datasets.Dataset], dict]:
    summary: dict[str, Any] = {"plugin_version": __version__, "datasets": []}
    train = _prepare_entries(options.train_entries, options, tokenizer, summary)
    eval_dataset = None
    if options.test_entries:
        eval_dataset = _prepare_entries(options.test_entries, options, tokenizer, summary)
    elif options.val_set_size:
        parts = train.train_test_split(test_size=options.val_set_size, shuffle=True, seed=options.seed)
        train, eval_dataset = parts["train"], parts["test"]
    if options.shuffle:
        train = train.shuffle(seed=options.seed)
    splits = {"train": train}
    if eval_dataset is not None:
        splits["eval"] = eval_dataset
    summary.update(train_pairs=len(train), eval_pairs=len(eval_dataset) if eval_dataset is not None else 0)
    return splits, summary


def _prepare_entries(entries: tuple[dict, ...], options: DataOptions, tokenizer, summary: dict) -> datasets.Dataset:
    parts = []
    for entry in entries:
        prepared = prepare_entry(entry, options, tokenizer)
        summary["datasets"].append({"source": prepared.source, "type": entry.get("type"), "rows": prepared.rows,
                                    "skipped": len(prepared.skipped), **vars(prepared.stats)})
        parts.append(with_provenance(prepared))
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def with_provenance(prepared: PreparedEntry) -> datasets.Dataset:
    """The entry's token ids with ``merlina_source`` (how errors name the entry) and ``merlina_source_row``
    (the row in it, counting skipped ones): a NaN at step N names its rows in the user's files (`nonfinite`)."""
    import numpy as np

    rows = np.delete(np.arange(prepared.rows), [index for index, _ in prepared.skipped])
    tokenised = prepared.tokenised
    if len(rows) != len(tokenised):  # pragma: no cover - tokenisation keeps every checked row
        return tokenised
    tokenised = tokenised.add_column(SOURCE_ROW_COLUMN, rows)
    return tokenised.add_column(SOURCE_COLUMN, [prepared.source] * len(tokenised))


def prepare_entry(entry: dict, options: DataOptions, tokenizer) -> PreparedEntry:
    """One `datasets:` entry read, mapped through its strategy, checked (bad rows stop or are skipped,
    by ``options.skip_bad_rows``) and tokenised with ``options``' limits."""
    source = describe_source(entry)
    raw = load_raw_dataset(entry, options)
    rows = len(raw)
    checked, skipped = mapping.apply_strategy(raw, entry, source=source, skip_bad_rows=options.skip_bad_rows)
    del raw  # the strategy read all of its memory-mapped file: dropped, those pages leave the process (RSS)
    tokenised, stats = mapping.tokenise_pairs(checked, options, tokenizer)
    return PreparedEntry(source, rows, tokenised, stats, skipped)


def describe_source(entry: dict) -> str:
    """How errors name a dataset: its path, plus data files / split when given."""
    source = str(entry.get("path"))
    if entry.get("data_files"):
        source += f" (data_files {entry['data_files']})"
    if entry.get("split") and entry["split"] != "train":
        source += f" [{entry['split']}]"
    return source


def load_raw_dataset(entry: dict, options: DataOptions) -> datasets.Dataset:
    """One `datasets:` entry through Axolotl's own loader (local files, hub, cloud, URLs)."""
    from axolotl.utils.data.shared import load_dataset_with_config
    from axolotl.utils.dict import DictDefault

    loaded = load_dataset_with_config(DictDefault(entry), use_auth_token=options.use_auth_token)
    if isinstance(loaded, datasets.DatasetDict):
        split = entry.get("split") or "train"
        if split not in loaded:
            raise ValueError(f"{describe_source(entry)}: no split {split!r}; it has {sorted(loaded)}")
        loaded = loaded[split]
    if not isinstance(loaded, datasets.Dataset):
        raise ValueError(f"{describe_source(entry)}: streaming datasets are not supported by rl: orpo_standalone")
    return loaded


def dataset_hash(options: DataOptions, tokenizer) -> str:
    """Everything the prepared tokens depend on, hashed: data entries, files, limits, tokenizer, code."""
    entries = [*options.train_entries, *options.test_entries]
    material = {
        "plugin": ["merlina_orpo_plugin", __version__],
        # The code that reads, checks and tokenises rows: an edit (a row newly accepted, a new count
        # in the summary) never reuses a copy prepared before it, whatever the version says.
        "code": [*code_sources(), *package_sources("merlina_orpo_plugin.strategies"),
                 *(source_text(m) for m in (data_options, mapping, sys.modules[__name__]))],
        "datasets": list(options.train_entries),
        "test_datasets": list(options.test_entries),
        "files": [_file_signature(entry.get("path")) for entry in entries],
        "val_set_size": options.val_set_size,
        "seed": options.seed,
        "shuffle": options.shuffle,
        "sequence_len": options.max_length,
        "max_prompt_length": options.prompt_floor,
        "max_completion_length": options.max_completion_length,
        "encoder_decoder": options.encoder_decoder,
        "skip_bad_rows": options.skip_bad_rows,
        "tokenizer": [getattr(tokenizer, "name_or_path", None), tokenizer.chat_template, len(tokenizer),
                      tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_signature(path: Any) -> Any:
    """Size and mtime of a local file or folder's files, so an edited data file invalidates the cache."""
    if not path or not Path(str(path)).exists():
        return path
    root = Path(str(path))
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files[:1000]]
