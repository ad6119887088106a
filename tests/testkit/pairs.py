"""The project's preference pairs (tests/assets/pairs; its README lists them): as stored, shaped into
the layouts `prepare_preference_dataset` accepts, and `quirks`, an oracle that counts empty answers
and identical pairs on the raw rows without going through the strategies."""

from __future__ import annotations

import json
from pathlib import Path

from . import PAIRS

def pairs_path(name: str) -> Path:
    return PAIRS / name


def pairs_rows(name: str) -> list[dict]:
    """One file of tests/assets/pairs as stored, a new list each call (tests may change it).

    JSON Lines are split at "\\n" only: a U+2028 inside a string must not split a row.
    """
    text = pairs_path(name).read_text(encoding="utf-8")
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.split("\n") if line]
    return json.loads(text)


def _final(value) -> str:
    if isinstance(value, dict):  # a ShareGPT answer: {"from": "gpt", "value": ...}
        return value["value"]
    if isinstance(value, list):  # a conversation: the last message is the answer
        return value[-1]["content"]
    marker = value.rfind("\n\nAssistant:")  # an HH transcript: what follows its last turn marker
    return value[marker + len("\n\nAssistant:"):] if marker >= 0 else value


def quirks(rows: list[dict], chosen: str = "chosen", rejected: str = "rejected") -> tuple[int, int]:
    """(empty final answers, chosen and rejected identical), counted on the raw rows by string operations."""
    empty = sum(not _final(row[key]).strip() for row in rows for key in (chosen, rejected))
    identical = sum(row[chosen] == row[rejected] for row in rows)
    return empty, identical


# ShareGPT speakers -> chat-template roles, as LLaMA-Factory maps them.
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def sharegpt_to_messages(turns: list[dict]) -> list[dict]:
    return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in turns]


def conversational_rows(name: str = "sharegpt_en.json") -> list[dict]:
    """A ShareGPT file (LLaMA-Factory's DPO layout) in the conversational layout: history -> prompt."""
    return [
        {
            "prompt": sharegpt_to_messages(r["conversations"]),
            "chosen": sharegpt_to_messages([r["chosen"]]),
            "rejected": sharegpt_to_messages([r["rejected"]]),
        }
        for r in pairs_rows(name)
    ]


def standard_rows() -> list[dict]:
    """stack_exchange.json in the standard layout (torchtune's prompt format); long code answers."""
    return [
        {"prompt": f"Question: {r['question']}\n\nAnswer: ", "chosen": r["response_j"], "rejected": r["response_k"]}
        for r in pairs_rows("stack_exchange.json")
    ]


def ultrafeedback_rows() -> list[dict]:
    """ultrafeedback_h4.jsonl: string `prompt` beside whole [user, assistant] answers (implicit prompt)."""
    return pairs_rows("ultrafeedback_h4.jsonl")


def single_turn_pairs(n: int) -> list[dict[str, str]]:
    """The first ``n`` single-turn pairs of sharegpt_en.json as plain strings, cut to mixed short lengths."""
    pairs = []
    for row in pairs_rows("sharegpt_en.json"):
        turns = row["conversations"]
        if len(turns) != 1:
            continue
        pairs.append(
            {
                "prompt": turns[0]["value"][:240].strip() + "\n",
                "chosen": row["chosen"]["value"][: 120 + 40 * (len(pairs) % 4)].strip(),
                "rejected": row["rejected"]["value"][: 100 + 50 * (len(pairs) % 3)].strip(),
            }
        )
        if len(pairs) == n:
            return pairs
    raise AssertionError(f"sharegpt_en.json has fewer than {n} single-turn pairs")


def dataset(rows: list[dict]):
    import datasets

    return datasets.Dataset.from_list(rows)
