"""`axolotl orpo-preview CONFIG.yml`: the pairs `rl: orpo_standalone` would train on, as tokens.

Where chat templates are debugged: each `datasets:` entry goes through the plugin's own pipeline
(`datasets.prepare_entry`: load; `mapping.py`: strategy and row check, then the data pipeline:
render, tokenise, truncate) under the config's `DataOptions`, resolved once, and the first pairs
are printed with the prompt / completion boundary marked and the token ids on both sides of it,
then counts (refused and truncated rows, empty completions, identical pairs) and length percentiles.

Registered in `pyproject.toml` under Axolotl's `axolotl.cli_commands` entry-point group. Axolotl
imports this module to render `axolotl --help`, so Axolotl, datasets and transformers are
imported inside the command, not here.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import yaml

from . import LOG
from .preview import format_counts, format_pair, length_table, pair_lengths

if TYPE_CHECKING:
    from .data_options import DataOptions

RL_NAME = "orpo_standalone"  # plugin.RL_NAME; that module imports Axolotl, too slow for `--help`
PLUGIN_NAME = "MerlinaORPOPlugin"
BAD_ROW_EXAMPLES = 3


@click.command("orpo-preview")
@click.argument("config", metavar="CONFIG.yml")
@click.option("--rows", default=3, show_default=True, type=click.IntRange(min=0), metavar="N",
              help="Pairs to print per dataset (statistics always cover all of them).")
@click.option("--dataset", "dataset_index", type=click.IntRange(min=0), default=None, metavar="I",
              help="Only the I-th `datasets:` entry (from 0); default: every `datasets:` and `test_datasets:` entry.")
@click.option("--max-chars", default=600, show_default=True, type=click.IntRange(min=40), metavar="C",
              help="Longest text shown per prompt / completion; longer ones are cut in the middle.")
def orpo_preview(config: str, rows: int, dataset_index: int | None, max_chars: int) -> None:
    """Show how `rl: orpo_standalone` tokenises the datasets of CONFIG.yml.

    For each dataset: the first pairs decoded with special tokens, marked where the prompt ends and
    each completion starts, with the token ids at that boundary; then the pairs, the rows that would
    be refused, the truncated pairs, the empty completions, the pairs whose chosen and rejected are the
    same, and the token-length percentiles. Nothing is trained and
    `dataset_prepared_path` is not written.
    """
    _check_config_file(config)
    _quiet_logs()
    cfg = _load_orpo_config(config)
    from axolotl.loaders import load_tokenizer

    from .data_options import DataOptions

    tokenizer = load_tokenizer(cfg)
    options = DataOptions.from_cfg(cfg)
    entries = _selected_entries(options, dataset_index)
    click.echo(_setup_line(options, tokenizer))
    failed = 0
    for label, entry in entries:
        click.echo(f"\n════ {label}: {entry.get('path')} (type {entry.get('type')}) ════")
        try:
            click.echo(_preview_entry(entry, options, tokenizer, rows=rows, max_chars=max_chars))
        except (ValueError, OSError) as error:  # unreadable or untokenisable: say so, preview the others
            failed += 1
            click.echo(f"  error: {error}")
    if failed:
        raise click.ClickException(f"{failed} of {len(entries)} dataset entries could not be prepared (see above)")


def _quiet_logs() -> None:
    # Axolotl's INFO lines (the whole config, dumped by load_cfg) would bury the preview, so its
    # console handler keeps warnings only (debug.log keeps all); AXOLOTL_LOG_LEVEL still wins when
    # set. Axolotl sets every logger it creates to DEBUG, so only a handler filter can do this.
    if "AXOLOTL_LOG_LEVEL" not in os.environ:
        for handler in logging.getLogger("axolotl").handlers:
            if getattr(handler, "stream", None) in (sys.stdout, sys.stderr):
                handler.addFilter(lambda record: record.levelno >= logging.WARNING)
    # The pipeline's warnings about skipped and truncated rows repeat the statistics printed here.
    for name in (LOG.name, "merlina_orpo_plugin.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _check_config_file(config: str) -> None:
    """Refuse a missing or non-ORPO local config before load_cfg validates it (slowly) as something else."""
    if config.startswith("https://"):  # load_cfg downloads these; checked after loading
        return
    if not Path(config).is_file():
        raise click.ClickException(f"{config}: no such config file")
    raw = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise click.ClickException(f"{config}: not a YAML mapping of config keys")
    if raw.get("rl") != RL_NAME:
        raise click.ClickException(_not_orpo(config, f"`rl` is {raw.get('rl')!r}"))
    listed = any(isinstance(p, str) and p.endswith(PLUGIN_NAME) for p in raw.get("plugins") or [])
    if not (listed or _loaded_for_every_config()):
        raise click.ClickException(_not_orpo(config, "`plugins:` does not list the plugin"))


def _loaded_for_every_config() -> bool:
    """Whether this Axolotl loads the plugin without a `plugins:` line: 0.21+ loads every installed
    `axolotl.plugins` entry point (`integrations.base.get_builtin_plugins`), and installing this package
    registers one; 0.19 and 0.20 load only what `plugins:` lists. Read from the package metadata:
    importing Axolotl here would cost seconds and print its logging setup."""
    from importlib.metadata import PackageNotFoundError, entry_points, version

    from packaging.version import Version

    try:
        if Version(version("axolotl")) < Version("0.21.0"):
            return False
    except PackageNotFoundError:
        return False
    return any(point.value.startswith("merlina_orpo_plugin") for point in entry_points(group="axolotl.plugins"))


def _load_orpo_config(config: str):
    """The validated config through Axolotl's `load_cfg` (which runs our `register()`), ORPO only."""
    from axolotl.cli.config import load_cfg

    from .data_options import orpo_enabled

    try:
        cfg = load_cfg(config)
    except ValueError as error:  # pydantic's ValidationError and our register() checks are ValueErrors
        raise click.ClickException(f"{config}: {error}") from error
    if not orpo_enabled(cfg):
        raise click.ClickException(_not_orpo(config, f"`rl` is {cfg.get('rl')!r}"))  # an https config
    return cfg


def _not_orpo(config: str, why: str) -> str:
    plugins = "" if _loaded_for_every_config() else f" and `plugins: [merlina_orpo_plugin.{PLUGIN_NAME}]`"
    return f"{config} is not an `rl: {RL_NAME}` config ({why}); orpo-preview needs `rl: {RL_NAME}`{plugins}"


def _selected_entries(options: DataOptions, dataset_index: int | None) -> list[tuple[str, dict]]:
    train = options.train_entries
    if dataset_index is not None:
        if dataset_index >= len(train):
            raise click.ClickException(
                f"--dataset {dataset_index}: the config has {len(train)} `datasets:` entries (0 to {len(train) - 1})")
        return [(f"datasets[{dataset_index}]", train[dataset_index])]
    test = options.test_entries
    return [*((f"datasets[{i}]", e) for i, e in enumerate(train)),
            *((f"test_datasets[{i}]", e) for i, e in enumerate(test))]


def _setup_line(options: DataOptions, tokenizer) -> str:
    special = ", ".join(f"{name} {getattr(tokenizer, f'{name}_token')!r} ({getattr(tokenizer, f'{name}_token_id')})"
                        for name in ("bos", "eos", "pad"))
    completion = options.max_completion_length
    completions = f"at most {completion} tokens" if completion else "not capped"
    return (f"tokenizer: {tokenizer.name_or_path}; {special}\n"
            f"limits: sequence_len {options.max_length}; long prompts cut from the left to no fewer than "
            f"{options.prompt_floor} tokens; completions {completions}")


def _preview_entry(entry: dict, options: DataOptions, tokenizer, *, rows: int, max_chars: int) -> str:
    from dataclasses import replace

    import datasets

    from ..data import OUTPUT_COLUMNS
    from .datasets import prepare_entry

    datasets.disable_progress_bars()
    # Always skip here, so that every bad row is counted instead of stopping at the first.
    prepared = prepare_entry(entry, replace(options, skip_bad_rows=True), tokenizer)
    tokenised, stats, refused = prepared.tokenised, prepared.stats, prepared.skipped
    out = [f"{prepared.rows} rows, {stats.layout} layout"]
    for index, row in enumerate(tokenised.select(range(min(rows, len(tokenised))))):
        out.append(f"\n── pair {index} ──")
        out.append(format_pair(*(row[name] for name in OUTPUT_COLUMNS), tokenizer, max_chars=max_chars))
    out.append("\nstatistics")
    out.append(format_counts(stats, refused=len(refused), skip_bad_rows=options.skip_bad_rows,
                             bad_rows=refused[:BAD_ROW_EXAMPLES]))
    out.append(length_table(pair_lengths(*_column_lengths(tokenised, OUTPUT_COLUMNS))))
    return "\n".join(out)


def _column_lengths(tokenised, columns) -> list[list[int]]:
    import pyarrow.compute as pc

    table = tokenised.with_format("arrow")[:]  # Arrow lengths: no Python list per row
    return [pc.list_value_length(table.column(name)).to_pylist() for name in columns]
