"""Loaders for the third-party data in ../shared/data, shaped into the layouts the data module accepts.

Each loader skips the calling test with the reason when the shared folder is absent (a user's clone
has no ../shared). Loads are cached: the tokenizer's first load costs seconds on 2 cores.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LLAMAFACTORY = ("llamafactory-dpo-demo", "dpo_en_demo.json")
ULTRAFEEDBACK = ("ultrafeedback-h4-sample", "dummy_dpo.jsonl")
STACK_EXCHANGE = ("stack-exchange-paired-sample", "stack_exchange_paired_tiny.json")
SMOLLM2 = ("tokenizers", "smollm2")

# ShareGPT speakers -> chat-template roles, as LLaMA-Factory maps them.
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def shared_file(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: third-party test data lives in ../shared/data beside the repo")
    return path


@lru_cache(maxsize=1)
def _load_smollm2(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def smollm2_tokenizer():
    """The real SmolLM2 tokenizer: bos `<|im_start|>`=1, eos = pad `<|im_end|>`=2, ChatML template."""
    from conftest import smollm2_dir

    return _load_smollm2(str(smollm2_dir()))


def sharegpt_to_messages(turns: list[dict]) -> list[dict]:
    return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in turns]


def llamafactory_rows() -> list[dict]:
    """The 300 LLaMA-Factory pairs in the conversational layout: history -> prompt, gpt turns -> answers."""
    raw = json.loads(shared_file(*LLAMAFACTORY).read_text())
    return [
        {
            "prompt": sharegpt_to_messages(r["conversations"]),
            "chosen": sharegpt_to_messages([r["chosen"]]),
            "rejected": sharegpt_to_messages([r["rejected"]]),
        }
        for r in raw
    ]


def llamafactory_raw() -> list[dict]:
    """The LLaMA-Factory rows as stored (ShareGPT `conversations`, `chosen`/`rejected` single dicts)."""
    return json.loads(shared_file(*LLAMAFACTORY).read_text())


def ultrafeedback_rows() -> list[dict]:
    """16 HuggingFaceH4/ultrafeedback_binarized rows: string `prompt`, whole [user, assistant] answers."""
    return [json.loads(line) for line in shared_file(*ULTRAFEEDBACK).read_text().splitlines() if line.strip()]


def stack_exchange_rows() -> list[dict]:
    """25 stack-exchange pairs in the standard layout (torchtune's prompt format); answers up to ~11.6k chars."""
    raw = json.loads(shared_file(*STACK_EXCHANGE).read_text())
    return [
        {"prompt": f"Question: {r['question']}\n\nAnswer: ", "chosen": r["response_j"], "rejected": r["response_k"]}
        for r in raw
    ]


def dataset(rows: list[dict]):
    import datasets

    return datasets.Dataset.from_list(rows)
