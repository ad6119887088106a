"""The project's own preference-pair files in tests/assets/pairs/ (their README lists what each holds).

`rows(name)` reads one file as a list of dicts; `quirks(rows)` is an oracle that does not go through
the strategies: it finds each row's two final answers by plain string operations and counts the
empty ones and the identical pairs, so tests can check the pipeline's counts against it.
"""

from __future__ import annotations

import json
from pathlib import Path

PAIRS = Path(__file__).resolve().parent / "assets" / "pairs"


def path(name: str) -> Path:
    return PAIRS / name


def rows(name: str) -> list[dict]:
    text = path(name).read_text(encoding="utf-8")
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def _final(value) -> str:
    if isinstance(value, dict):  # a ShareGPT answer: {"from": "gpt", "value": ...}
        return value["value"]
    if isinstance(value, list):  # a conversation: the last message is the answer
        return value[-1]["content"]
    marker = value.rfind("\n\nAssistant:")  # an HH transcript: what follows its last turn marker
    return value[marker + len("\n\nAssistant:"):] if marker >= 0 else value


def quirks(rows_: list[dict], chosen: str = "chosen", rejected: str = "rejected") -> tuple[int, int]:
    """(empty final answers, chosen and rejected identical), counted on the raw rows."""
    empty = sum(not _final(row[key]).strip() for row in rows_ for key in (chosen, rejected))
    identical = sum(row[chosen] == row[rejected] for row in rows_)
    return empty, identical
