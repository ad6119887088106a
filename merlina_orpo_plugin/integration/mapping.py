"""Raw rows of one `datasets:` entry -> checked preference pairs through its strategy, then tokens.

The entry's strategy (its `type:`) reads each raw row and declares the layout of what it returns;
in the same pass each pair is checked once (`data.validation.check_row`). A row the strategy cannot
read (`RowError`, naming the dataset's own column) or whose pair fails the check stops preprocessing
with the source, the row and the field, or is skipped with `merlina_skip_bad_rows`. The result is a
`data.CheckedPairs` in the declared layout, which `tokenise_pairs` hands to the data pipeline with the
limits of the config's `DataOptions`: no layout detection, no second check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import datasets

from ..data import CheckedPairs, Layout, check_row, tokenise_checked
from ..strategies import RowError, get_strategy
from ..strategies.registry import declared_layout
from . import LOG

if TYPE_CHECKING:
    from .data_options import DataOptions

_PAIR_FIELDS = ("prompt", "chosen", "rejected")


def apply_strategy(
    raw: datasets.Dataset, entry: dict, *, source: str, skip_bad_rows: bool
) -> tuple[CheckedPairs, list[tuple[int, str]]]:
    """Map every row through the entry's strategy and check the result; bad rows stop or are skipped.

    Returns (checked pairs, skipped rows as (index, reason)). Without ``skip_bad_rows`` the first bad
    row raises a ValueError naming the source, the row and the field; with it, the count and the
    first examples are logged.
    """
    strategy = get_strategy(entry)
    layout = declared_layout(strategy)  # checked when the registry built it
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
        more = ""
        if len(errors) > 1:
            more = f" ({len(errors) - 1} more bad rows; `merlina_skip_bad_rows: true` skips them)"
        raise ValueError(f"row {index} of {source}: {error}{more}")
    if errors:
        examples = "; ".join(f"row {i}: {e}" for i, e in errors[:3])
        LOG.warning("%s: skipped %d of %d rows (merlina_skip_bad_rows): %s", source, len(errors), len(raw), examples)
        mapped = mapped.filter(lambda error: not error, input_columns="_error")
    return CheckedPairs(mapped.remove_columns("_error"), layout, source), errors


def _map_rows(batch: dict[str, list], indices: list[int], *, strategy, layout: Layout) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in (*_PAIR_FIELDS, "_error")}
    names = list(batch)
    for position in range(len(indices)):
        row = {name: batch[name][position] for name in names}
        try:
            pair = strategy(row)
            error = check_row(pair, layout)  # the one check of the pair, whoever wrote the strategy
        except RowError as row_error:
            pair, error = None, str(row_error)
        if error:
            pair = _placeholder(layout)
        for key in _PAIR_FIELDS:
            out[key].append(pair[key])
        out["_error"].append(error or "")
    return out


def _placeholder(layout: Layout) -> dict[str, Any]:
    """A well-typed stand-in for a bad row (filtered out or reported before tokenisation)."""
    if layout is Layout.STANDARD:
        return {"prompt": "", "chosen": "", "rejected": ""}
    empty = [{"role": "user", "content": ""}]
    return {"prompt": empty, "chosen": empty, "rejected": empty}


def tokenise_pairs(checked: CheckedPairs, options: DataOptions, tokenizer):
    """The data pipeline on checked pairs, with the limits and model kind of ``options``: (token ids, stats)."""
    return tokenise_checked(
        checked,
        tokenizer,
        max_length=options.max_length,
        max_prompt_length=options.prompt_floor,
        max_completion_length=options.max_completion_length,
        num_proc=options.num_proc_for(len(checked.dataset)),
        encoder_decoder=options.encoder_decoder,
    )
