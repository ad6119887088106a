"""The workload: real preference text cut to target token counts, one JSONL every implementation reads.

Prompts, chosen and rejected answers come from the LLaMA-Factory DPO demo and the UltraFeedback H4
sample in ``../shared/data``. Each row's prompt and answers are cut to a per-row target length (the
shape's length times a seeded factor in [1 - jitter, 1 + jitter]) by decoding the first N tokens of
the SmolLM2 tokenizer, so batches mix lengths the way real data does. Rows are plain
``prompt``/``chosen``/``rejected`` strings: no chat template anywhere.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: ``../shared/data`` beside the repo; ``MERLINA_BENCH_SHARED_DATA`` points elsewhere (e.g. on a GPU box).
SHARED_DATA = Path(os.environ.get("MERLINA_BENCH_SHARED_DATA") or REPO.parent / "shared" / "data")
TOKENIZER_DIR = SHARED_DATA / "tokenizers" / "smollm2"
LLAMAFACTORY = SHARED_DATA / "llamafactory-dpo-demo" / "dpo_en_demo.json"
ULTRAFEEDBACK = SHARED_DATA / "ultrafeedback-h4-sample" / "dummy_dpo.jsonl"


@dataclass(frozen=True)
class Shape:
    name: str
    prompt_tokens: int
    answer_tokens: int
    jitter: float = 0.25

    def describe(self) -> str:
        return f"prompt ~{self.prompt_tokens}, answers ~{self.answer_tokens} tokens (+/-{self.jitter:.0%} per row)"


#: name -> (full shape, smoke shape)
SHAPES = {
    "ultrafeedback": (Shape("ultrafeedback", 128, 128), Shape("ultrafeedback", 32, 32)),
    "long-prompt": (Shape("long-prompt", 320, 40), Shape("long-prompt", 64, 8)),
}


def missing_inputs() -> list[Path]:
    """The third-party files the benchmark needs that are absent (``../shared`` beside the repo)."""
    return [p for p in (TOKENIZER_DIR / "tokenizer.json", LLAMAFACTORY, ULTRAFEEDBACK) if not p.exists()]


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def source_texts() -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) texts, LLaMA-Factory first (all turns of the history), then H4."""
    sources = []
    for row in json.loads(LLAMAFACTORY.read_text()):
        prompt = "\n\n".join(turn["value"] for turn in row["conversations"] if turn["from"] != "system")
        sources.append((prompt, row["chosen"]["value"], row["rejected"]["value"]))
    for line in ULTRAFEEDBACK.read_text().splitlines():
        row = json.loads(line)
        sources.append((row["prompt"], row["chosen"][-1]["content"], row["rejected"][-1]["content"]))
    return [s for s in sources if all(t.strip() for t in s)]


def _cut(tokenizer, texts: list[str], start: int, target: int) -> str:
    """The first ``target`` tokens of texts[start], continued with the following texts when short."""
    ids: list[int] = []
    i = start
    while len(ids) < target:
        if ids:
            ids += tokenizer("\n\n", add_special_tokens=False)["input_ids"]
        ids += tokenizer(texts[i % len(texts)], add_special_tokens=False)["input_ids"]
        i += 1
    return tokenizer.decode(ids[:target]).strip()


def build_rows(tokenizer, shape: Shape, num_rows: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(f"{seed}-{shape.name}")
    sources = source_texts()
    prompts, chosen, rejected = (list(column) for column in zip(*sources))

    def length(base: int) -> int:
        return max(1, round(base * rng.uniform(1 - shape.jitter, 1 + shape.jitter)))

    rows = []
    for i in range(num_rows):
        # The prompt ends with a newline so the answer starts a new BPE word in every tokenisation.
        rows.append(
            {
                "prompt": _cut(tokenizer, prompts, i, length(shape.prompt_tokens)) + "\n",
                "chosen": _cut(tokenizer, chosen, i, length(shape.answer_tokens)),
                "rejected": _cut(tokenizer, rejected, i, length(shape.answer_tokens)),
            }
        )
    return rows


def write_workload(path: Path, tokenizer, shape: Shape, num_rows: int, seed: int = 0) -> dict:
    """Write the JSONL and return a summary (row count, mean token counts of the plain texts)."""
    rows = build_rows(tokenizer, shape, num_rows, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    counts = {
        key: [len(tokenizer(row[key], add_special_tokens=False)["input_ids"]) for row in rows]
        for key in ("prompt", "chosen", "rejected")
    }
    return {
        "shape": asdict(shape),
        "path": str(path),
        "rows": len(rows),
        **{f"mean_{key}_tokens": sum(v) / len(v) for key, v in counts.items()},
        **{f"min_{key}_tokens": min(v) for key, v in counts.items()},
        **{f"max_{key}_tokens": max(v) for key, v in counts.items()},
    }


def read_rows(path: str | Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
