"""Row checks for preference data: each row checked once, before anything is tokenised.

Only a row whose STRUCTURE is broken is refused: a missing field (absent, None, an empty prompt or
an empty list of messages or ids), a wrong type, a message without a role or content. An empty
completion is legal (it trains the end token alone) and so are identical chosen and rejected; both
are counted by ``stats.py``, not refused here. Every problem names the row, the field and the source,
so a bad row 10,000 fails in seconds with a message that says what to fix, instead of as a shape
error in training: "row 17 of data/pairs.jsonl: `rejected` is None".

A dataset that passed is a ``CheckedPairs``: the pipeline tokenises it without checking again. The
Axolotl path checks each pair as its strategy makes it (``integration/mapping.py``) and builds the
``CheckedPairs`` itself; the Python API checks the whole dataset with ``validate_preference_dataset``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import datasets

from .layouts import Layout


@dataclass(frozen=True)
class CheckedPairs:
    """Rows that passed ``check_row`` for ``layout``, and where they came from (for error messages)."""

    dataset: datasets.Dataset
    layout: Layout
    source: str | None = None


def where(index: int, source: str | None) -> str:
    """'row 17 of data/pairs.jsonl', or 'row 17' without a source."""
    return f"row {index} of {source}" if source else f"row {index}"


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_text(value: Any, field: str, layout: Layout) -> str | None:
    """The problem with a string field, or None when it is fine."""
    if value is None:
        return f"`{field}` is None"
    if isinstance(value, str):
        # An empty answer is legal (HH-RLHF has them): it becomes the end token alone. An empty
        # prompt is a missing field more often than an intended unconditional pair, and an implicit
        # row's `chosen` / `rejected` is the whole conversation, prompt included.
        if field == "prompt":
            blank = value == ""
        else:
            blank = layout is Layout.IMPLICIT_TEXT and not value.strip()
        return f"`{field}` is empty" if blank else None
    if isinstance(value, list):
        return f"`{field}` must be a string in the {layout.value} layout like the other columns, got list"
    return f"`{field}` must be a string or a list of messages, got {_type_name(value)}"


def check_messages(value: Any, field: str, layout: Layout) -> str | None:
    """The problem with a message-list field, or None when it is fine."""
    if isinstance(value, str):
        return f"`{field}` must be a list of messages in the {layout.value} layout like the other columns, got str"
    problem = _check_list(value, field, "a string or a list of messages")
    if problem:
        return problem
    for i, message in enumerate(value):
        problem = _check_message(message, f"`{field}` message {i}")
        if problem:
            return problem
    return None  # an answer message with empty content is an empty completion: legal, counted


def _check_message(message: Any, name: str) -> str | None:
    if not isinstance(message, Mapping):
        return f"{name} must be a dict with `role` and `content`, got {_type_name(message)}"
    for key in ("role", "content"):
        if message.get(key) is None:
            hint = (
                " (ShareGPT `from`/`value` messages must be converted to `role`/`content`)" if "from" in message else ""
            )
            return f"{name} has no `{key}`{hint}"
        if not isinstance(message[key], str):
            return f"{name}: `{key}` must be a string, got {_type_name(message[key])}"
    if not message["role"]:
        return f"{name} has an empty `role`"
    return None


def _check_list(value: Any, field: str, expected: str) -> str | None:
    """None, not a list, or an empty list: the problem, named as ``expected`` says; None when it is a list."""
    if value is None:
        return f"`{field}` is None"
    if not isinstance(value, list):
        return f"`{field}` must be {expected}, got {_type_name(value)}"
    return f"`{field}` is empty" if not value else None


def check_token_ids(value: Any, field: str) -> str | None:
    """The problem with a list of token ids, or None when it is fine."""
    problem = _check_list(value, field, "a list of token ids")
    if problem:
        return problem
    for i, token in enumerate(value):
        if not isinstance(token, Integral) or isinstance(token, bool) or token < 0:
            return f"`{field}` must hold token ids (ints >= 0), got {token!r} ({_type_name(token)}) at position {i}"
    return None


def check_row(row: Mapping[str, Any], layout: Layout) -> str | None:
    """The first problem with one row of ``layout``, or None when the row is fine."""
    for field in layout.fields:
        value = row[field]
        if layout is Layout.TOKENIZED:
            problem = check_token_ids(value, field)
        elif layout.uses_messages:
            problem = check_messages(value, field, layout)
        else:
            problem = check_text(value, field, layout)
        if problem:
            return problem
    return None


def validate_preference_dataset(
    dataset: datasets.Dataset, layout: Layout, *, source: str | None = None, batch_size: int = 1000
) -> CheckedPairs:
    """Check every row of ``dataset`` for ``layout``; raise ValueError at the first bad one."""
    missing = [f for f in layout.fields if f not in dataset.column_names]
    if missing:
        names = ", ".join(f"`{f}`" for f in missing)
        raise ValueError(f"{source + ': ' if source else ''}the {layout.value} layout needs column(s) {names}")
    columns = dataset.select_columns(list(layout.fields))
    start = 0
    for batch in columns.iter(batch_size=batch_size):
        size = len(batch[layout.fields[0]])
        for offset in range(size):
            problem = check_row({f: batch[f][offset] for f in layout.fields}, layout)
            if problem:
                raise ValueError(f"{where(start + offset, source)}: {problem}")
        start += size
    return CheckedPairs(dataset, layout, source)
