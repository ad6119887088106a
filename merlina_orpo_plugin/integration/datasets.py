"""Preference datasets for `rl: orpo_standalone`: load, map by strategy, check, tokenise, split, cache.

Axolotl's loaders only know SFT and TRL's preference layouts, so the plugin owns the whole path:
each `datasets:` entry is loaded with Axolotl's own file/hub loader, mapped row by row by its
strategy (`type:`), checked, and tokenised by `merlina_orpo_plugin.data`. The result is cached
under `dataset_prepared_path` by a hash of everything that changes the tokens; the first process
builds it under a file lock and the others (ranks, later `train` runs) load it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import datasets
from filelock import FileLock

from .. import __version__
from ..data import prepare_preference_dataset
from ..data.formats import Layout
from ..data.validation import check_row
from ..strategies import RowError, get_strategy
from . import LOG
from .args import max_prompt_length

DEFAULT_PREPARED_PATH = "last_run_prepared"
_COMPLETE = "merlina_orpo_complete.json"
_LAYOUTS = {"conversational": Layout.CONVERSATIONAL, "text": Layout.STANDARD}


def load_orpo_datasets(cfg, tokenizer) -> tuple[datasets.Dataset, datasets.Dataset | None, dict]:
    """(train, eval or None, summary) for the validated ``cfg``, from the cache when it is there."""
    key = dataset_hash(cfg, tokenizer)
    target = Path(cfg.get("dataset_prepared_path") or DEFAULT_PREPARED_PATH) / f"merlina-orpo-{key}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if (target / _COMPLETE).exists():
            LOG.info("ORPO datasets: loading the prepared copy in %s", target)
        else:
            splits, summary = _build(cfg, tokenizer)
            datasets.DatasetDict(splits).save_to_disk(str(target))
            (target / _COMPLETE).write_text(json.dumps(summary, indent=2))
            LOG.info("ORPO datasets: prepared and saved to %s", target)
    loaded = datasets.load_from_disk(str(target))
    summary = json.loads((target / _COMPLETE).read_text())
    return loaded["train"], loaded["eval"] if "eval" in loaded else None, summary


def total_num_steps(cfg, train_size: int) -> int:
    """Optimizer steps of the run: `max_steps`, else epochs over the global batch (Axolotl's rule)."""
    if cfg.get("max_steps"):
        return int(cfg["max_steps"])
    return math.ceil(train_size * float(cfg.get("num_epochs") or 1) / int(cfg["batch_size"]))


def _build(cfg, tokenizer) -> tuple[dict[str, datasets.Dataset], dict]:
    summary: dict[str, Any] = {"plugin_version": __version__, "datasets": []}
    train = _prepare_entries(cfg["merlina_datasets"], cfg, tokenizer, summary)
    eval_dataset = None
    if cfg.get("merlina_test_datasets"):
        eval_dataset = _prepare_entries(cfg["merlina_test_datasets"], cfg, tokenizer, summary)
    elif cfg.get("val_set_size"):
        parts = train.train_test_split(test_size=cfg["val_set_size"], shuffle=True, seed=cfg.get("seed") or 42)
        train, eval_dataset = parts["train"], parts["test"]
    if cfg.get("shuffle_merged_datasets", True) is not False:
        train = train.shuffle(seed=cfg.get("seed") or 42)
    splits = {"train": train}
    if eval_dataset is not None:
        splits["eval"] = eval_dataset
    summary.update(train_pairs=len(train), eval_pairs=len(eval_dataset) if eval_dataset is not None else 0)
    return splits, summary


def _prepare_entries(entries: list[dict], cfg, tokenizer, summary: dict) -> datasets.Dataset:
    parts = []
    for entry in entries:
        source = describe_source(entry)
        raw = load_raw_dataset(entry, cfg)
        pairs, errors = apply_strategy(raw, entry, source=source, skip_bad_rows=bool(cfg.get("merlina_skip_bad_rows")))
        tokenised, stats = tokenise_pairs(pairs, cfg, tokenizer, source=source)
        summary["datasets"].append({"source": source, "type": entry.get("type"), "rows": len(raw),
                                    "skipped": len(errors), **vars(stats)})
        parts.append(tokenised)
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def tokenise_pairs(pairs: datasets.Dataset, cfg, tokenizer, *, source: str):
    """`prepare_preference_dataset` with the limits the config sets: (token ids, stats)."""
    return prepare_preference_dataset(
        pairs,
        tokenizer,
        max_length=cfg.get("sequence_len"),
        max_prompt_length=max_prompt_length(cfg),
        max_completion_length=cfg.get("merlina_max_completion_length"),
        num_proc=cfg.get("dataset_processes") if len(pairs) > 10_000 else None,
        source=source,
    )


def describe_source(entry: dict) -> str:
    """How errors name a dataset: its path, plus data files / split when given."""
    source = str(entry.get("path"))
    if entry.get("data_files"):
        source += f" (data_files {entry['data_files']})"
    if entry.get("split") and entry["split"] != "train":
        source += f" [{entry['split']}]"
    return source


def load_raw_dataset(entry: dict, cfg) -> datasets.Dataset:
    """One `datasets:` entry through Axolotl's own loader (local files, hub, cloud, URLs)."""
    from axolotl.utils.data.shared import load_dataset_with_config
    from axolotl.utils.dict import DictDefault

    loaded = load_dataset_with_config(DictDefault(entry), use_auth_token=bool(cfg.get("hf_use_auth_token")))
    if isinstance(loaded, datasets.DatasetDict):
        split = entry.get("split") or "train"
        if split not in loaded:
            raise ValueError(f"{describe_source(entry)}: no split {split!r}; it has {sorted(loaded)}")
        loaded = loaded[split]
    if not isinstance(loaded, datasets.Dataset):
        raise ValueError(f"{describe_source(entry)}: streaming datasets are not supported by rl: orpo_standalone")
    return loaded


def apply_strategy(
    raw: datasets.Dataset, entry: dict, *, source: str, skip_bad_rows: bool
) -> tuple[datasets.Dataset, list[tuple[int, str]]]:
    """Map every row through the entry's strategy and check the result; bad rows stop or are skipped.

    Returns (pairs, skipped rows as (index, reason)). Without ``skip_bad_rows`` the first bad row raises a
    ValueError naming the source, the row and the field; with it, the count and the first
    examples are logged.
    """
    strategy = get_strategy(entry)
    layout = _LAYOUTS[strategy.layout]
    mapped = raw.map(
        _map_rows,
        with_indices=True,
        batched=True,
        remove_columns=raw.column_names,
        fn_kwargs={"strategy": strategy, "layout": layout},
        desc=f"Mapping {entry.get('type')} rows",
    )
    errors = [(i, e) for i, e in enumerate(mapped["_error"]) if e]
    if errors and not skip_bad_rows:
        index, error = errors[0]
        more = f" ({len(errors) - 1} more bad rows; `merlina_skip_bad_rows: true` skips them)" if len(errors) > 1 else ""
        raise ValueError(f"row {index} of {source}: {error}{more}")
    if errors:
        examples = "; ".join(f"row {i}: {e}" for i, e in errors[:3])
        LOG.warning("%s: skipped %d of %d rows (merlina_skip_bad_rows): %s", source, len(errors), len(raw), examples)
        mapped = mapped.filter(lambda error: not error, input_columns="_error")
    return mapped.remove_columns("_error"), errors


def _map_rows(batch: dict[str, list], indices: list[int], *, strategy, layout: Layout) -> dict[str, list]:
    out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "_error": []}
    names = list(batch)
    for position in range(len(indices)):
        row = {name: batch[name][position] for name in names}
        try:
            pair = strategy(row)
            error = check_row(pair, layout)
        except RowError as row_error:
            pair, error = None, str(row_error)
        if error:
            pair = _placeholder(layout)
        for key in ("prompt", "chosen", "rejected"):
            out[key].append(pair[key])
        out["_error"].append(error or "")
    return out


def _placeholder(layout: Layout) -> dict[str, Any]:
    """A well-typed stand-in for a bad row (filtered out or reported before tokenisation)."""
    if layout is Layout.STANDARD:
        return {"prompt": "", "chosen": "", "rejected": ""}
    empty = [{"role": "user", "content": ""}]
    return {"prompt": empty, "chosen": empty, "rejected": empty}


def dataset_hash(cfg, tokenizer) -> str:
    """Everything the prepared tokens depend on, hashed: data entries, files, limits, tokenizer, plugin."""
    entries = [*(cfg.get("merlina_datasets") or []), *(cfg.get("merlina_test_datasets") or [])]
    material = {
        "plugin": ["merlina_orpo_plugin", __version__],
        "datasets": cfg.get("merlina_datasets"),
        "test_datasets": cfg.get("merlina_test_datasets"),
        "files": [_file_signature(entry.get("path")) for entry in entries],
        "val_set_size": cfg.get("val_set_size"),
        "seed": cfg.get("seed"),
        "shuffle": cfg.get("shuffle_merged_datasets", True),
        "sequence_len": cfg.get("sequence_len"),
        "max_prompt_length": max_prompt_length(cfg),
        "max_completion_length": cfg.get("merlina_max_completion_length"),
        "skip_bad_rows": bool(cfg.get("merlina_skip_bad_rows")),
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
