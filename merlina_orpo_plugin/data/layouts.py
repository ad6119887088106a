"""The row layouts of preference data, and their detection from a dataset's columns.

The layouts follow TRL's dataset conventions:

- ``standard``: ``prompt``, ``chosen``, ``rejected`` strings, used as they are (no chat template).
- ``conversational``: ``prompt``, ``chosen``, ``rejected`` lists of ``{"role", "content"}`` messages,
  rendered with the tokenizer's chat template.
- ``implicit``: only ``chosen`` / ``rejected`` (strings or whole conversations); the prompt is their
  longest common prefix. A string ``prompt`` column beside message-list ``chosen`` / ``rejected``
  (HuggingFaceH4/ultrafeedback_binarized) is ignored, as TRL's ``maybe_extract_prompt`` does.
- ``tokenized``: ``prompt_input_ids``, ``chosen_input_ids``, ``rejected_input_ids`` lists of ints.

A dataset strategy DECLARES its layout, a member of this one vocabulary (``Layout.CONVERSATIONAL`` or
``Layout.STANDARD``, see ``merlina_orpo_plugin.strategies``), taken as declared with no detection.
``detect_layout`` is for the Python API, where nobody declared one.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import datasets

TOKEN_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")


class Layout(str, Enum):
    STANDARD = "standard"
    CONVERSATIONAL = "conversational"
    IMPLICIT_TEXT = "implicit prompt (strings)"
    IMPLICIT_CONVERSATIONAL = "implicit prompt (conversations)"
    TOKENIZED = "tokenized"

    @classmethod
    def named(cls, value: Layout | str) -> Layout:
        """A member, its value, or ``"text"``: the name strategy packages written for the first plugin
        contract declare for ``standard`` (still accepted there, and by ``prepare_preference_dataset``)."""
        return cls.STANDARD if value == "text" else cls(value)

    @property
    def fields(self) -> tuple[str, ...]:
        """The columns this layout reads, in the order validation reports them."""
        if self is Layout.TOKENIZED:
            return TOKEN_COLUMNS
        if self in (Layout.STANDARD, Layout.CONVERSATIONAL):
            return ("prompt", "chosen", "rejected")
        return ("chosen", "rejected")

    @property
    def uses_messages(self) -> bool:
        return self in (Layout.CONVERSATIONAL, Layout.IMPLICIT_CONVERSATIONAL)


# Shown whenever no layout matches, so the user sees every accepted shape at once.
ACCEPTED_LAYOUTS = (
    "standard: `prompt`, `chosen`, `rejected` strings; "
    "conversational: `prompt`, `chosen`, `rejected` lists of {role, content} messages; "
    "implicit prompt: `chosen`, `rejected` (strings or whole conversations); "
    "tokenized: `prompt_input_ids`, `chosen_input_ids`, `rejected_input_ids` lists of ints"
)
_REQUIRED = {
    "standard or conversational": {"prompt", "chosen", "rejected"},
    "implicit prompt": {"chosen", "rejected"},
    "tokenized": set(TOKEN_COLUMNS),
}


def _column_kind(feature: Any) -> str:
    """'messages', 'text' or 'other', from a column's Arrow feature (one type for all rows)."""
    if isinstance(feature, datasets.Value):
        return "text" if feature.dtype in ("string", "large_string") else "other"
    inner = getattr(feature, "feature", None)
    if isinstance(feature, list) and len(feature) == 1:  # the legacy `[feature]` spelling
        inner = feature[0]
    if isinstance(feature, (datasets.List, datasets.LargeList, list)) and isinstance(inner, dict):
        return "messages"
    return "other"


def detect_layout(dataset: datasets.Dataset) -> Layout:
    """The layout of ``dataset``, from its column names and types; ValueError when none matches."""
    columns = set(dataset.column_names)
    if set(TOKEN_COLUMNS) <= columns:
        return Layout.TOKENIZED
    if not {"chosen", "rejected"} <= columns:
        raise ValueError(_unknown_layout_message(dataset.column_names))
    kinds = {name: _column_kind(dataset.features[name]) for name in ("prompt", "chosen", "rejected") if name in columns}
    # A wrongly typed column (ints, all-None) gets the layout its partner suggests; validation then
    # reports the first bad row with its type.
    answer_kind = kinds["chosen"] if kinds["chosen"] != "other" else kinds["rejected"]
    prompt_kind = kinds.get("prompt")
    if answer_kind == "messages":
        # A string prompt beside whole conversations is a copy of the first user turn (H4 datasets);
        # any other prompt column (all None, ints) is a broken conversational one for validation to report.
        return Layout.IMPLICIT_CONVERSATIONAL if prompt_kind in (None, "text") else Layout.CONVERSATIONAL
    if prompt_kind == "messages":
        raise ValueError(
            "`prompt` is a list of messages but `chosen` / `rejected` are not: in the conversational layout "
            f"all three are lists of {{role, content}} messages. Accepted layouts: {ACCEPTED_LAYOUTS}"
        )
    return Layout.STANDARD if prompt_kind is not None else Layout.IMPLICIT_TEXT


def _unknown_layout_message(column_names: Sequence[str]) -> str:
    columns = set(column_names)
    found = ", ".join(f"`{c}`" for c in column_names) or "none"
    # Name the missing columns of the layout the data is closest to: usually a typo or a rename.
    near = [(len(req - columns), name, req - columns) for name, req in _REQUIRED.items() if req & columns]
    hint = ""
    if near:
        _, name, missing = min(near)
        hint = f" Closest layout: {name}, missing " + ", ".join(f"`{c}`" for c in sorted(missing)) + "."
    return f"unrecognised preference data layout: columns found: {found}.{hint} Accepted layouts: {ACCEPTED_LAYOUTS}"
