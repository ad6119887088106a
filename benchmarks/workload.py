"""The inputs every subcommand shares: the package's defaults, the workload, random pairs, the seeded Llama."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from merlina_orpo_plugin.options import BY_NAME, prompt_floor

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / ".assets" / "tokenizers" / "smollm2"
PAIRS = REPO / "tests" / "assets" / "pairs" / "sharegpt_en.json"
BETA, MAX_LENGTH, CHUNK = (BY_NAME[name].default for name in ("beta", "max_length", "loss_chunk_size"))
LIMITS = dict(max_length=MAX_LENGTH, max_prompt_length=prompt_floor(MAX_LENGTH, BY_NAME["max_prompt_length"].default))
PAD = 2  # SmolLM2's <|im_end|>: EOS and pad


@dataclass(frozen=True)
class Shape:
    name: str
    prompt_tokens: int
    answer_tokens: int
    pairs_per_step: int
    jitter: float = 0.25

    def describe(self) -> str:
        unique = self.prompt_tokens + 2 * self.answer_tokens  # the prompt once, both answers
        return (f"{self.pairs_per_step} pairs/step, prompt ~{self.prompt_tokens}, answers ~{self.answer_tokens} tokens "
                f"(~{unique} unique per pair, each length +/-{self.jitter:.0%} per row)")


#: shape -> scale -> (prompt tokens, answer tokens, pairs per step)
_SHAPE_SIZES = {"ultrafeedback": dict(gpu=(165, 264, 8), cpu=(128, 128, 4), smoke=(16, 16, 2)),
                "long-prompt": dict(gpu=(1250, 65, 4), cpu=(320, 40, 4), smoke=(32, 4, 2))}
SHAPES = {name: {scale: Shape(name, *size) for scale, size in sizes.items()} for name, sizes in _SHAPE_SIZES.items()}


def missing_inputs() -> list[str]:
    """What the benchmark needs from the repository and lacks, each with the command that makes it."""
    needs = {TOKENIZER_DIR / "tokenizer.json": f"{TOKENIZER_DIR.relative_to(REPO)}/ (run `make assets`)",
             PAIRS: f"{PAIRS.relative_to(REPO)} (part of the repository: check out a complete tree)"}
    return [text for path, text in needs.items() if not path.exists()]


def load_tokenizer(path: str | Path = TOKENIZER_DIR):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def build_rows(tokenizer, shape: Shape, num_rows: int, seed: int = 0) -> list[dict[str, str]]:
    """Plain prompt/chosen/rejected strings cut from the ShareGPT pairs, each length jittered by a seeded factor."""
    rng, sep = random.Random(f"{seed}-{shape.name}"), tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    sources = [("\n\n".join(t["value"] for t in row["conversations"] if t["from"] != "system"),
                row["chosen"]["value"], row["rejected"]["value"]) for row in json.loads(PAIRS.read_text("utf-8"))]
    columns, cache = list(zip(*[s for s in sources if all(t.strip() for t in s)])), {}

    def cut(column: int, start: int, base: int) -> str:  # the first N tokens of text i, continued with i + 1, ...
        target, ids, i = max(1, round(base * rng.uniform(1 - shape.jitter, 1 + shape.jitter))), [], start
        while len(ids) < target:
            key = (column, i % len(columns[column]))
            if key not in cache:
                cache[key] = tokenizer(columns[column][key[1]], add_special_tokens=False)["input_ids"]
            ids, i = ids + (sep if ids else []) + cache[key], i + 1
        return tokenizer.decode(ids[:target]).strip()

    # The prompt ends with a newline so the answer starts a new BPE word in every tokenisation.
    return [{"prompt": cut(0, i, shape.prompt_tokens) + "\n", "chosen": cut(1, i, shape.answer_tokens),
             "rejected": cut(2, i, shape.answer_tokens)} for i in range(num_rows)]


def write_workload(path: Path, tokenizer, shape: Shape, num_rows: int, seed: int = 0) -> dict:
    """Write the JSONL and return a summary (row count, token counts of the plain texts)."""
    rows = build_rows(tokenizer, shape, num_rows, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    summary = {"shape": asdict(shape), "rows": len(rows), "source": str(PAIRS.relative_to(REPO)),
               "source_sha256": hashlib.sha256(PAIRS.read_bytes()).hexdigest()[:16]}
    for key in ("prompt", "chosen", "rejected"):
        counts = [len(tokenizer(row[key], add_special_tokens=False)["input_ids"]) for row in rows]
        summary.update({f"mean_{key}_tokens": sum(counts) / len(counts), f"max_{key}_tokens": max(counts)})
    return summary


def read_rows(path: str | Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def random_pairs(n, prompt, chosen, rejected, vocab, seed) -> list[dict]:
    """``n`` tokenised pairs, lengths uniform in the (lo, hi) ranges, ids seeded ``seed + 1``."""
    import torch

    lengths, ids = random.Random(seed), torch.Generator().manual_seed(seed + 1)

    def seq(lo_hi):
        return torch.randint(3, vocab, (lengths.randint(*lo_hi),), generator=ids).tolist()

    return [dict(prompt_input_ids=seq(prompt), chosen_input_ids=seq(chosen), rejected_input_ids=seq(rejected))
            for _ in range(n)]


_WIDTHS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
SIZES = {"smoke": dict(zip(_WIDTHS, (64, 192, 2, 4, 4)), tie_word_embeddings=False),
         "cpu": dict(zip(_WIDTHS, (256, 688, 4, 4, 4)), tie_word_embeddings=False),
         "gpu": dict(zip(_WIDTHS, (2048, 8192, 16, 32, 8)), tie_word_embeddings=True, rope_theta=500000.0)}
DEFAULT_VOCABS = {"smoke": (49152,), "cpu": (49152,), "gpu": (128256,)}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", target_modules=PROJECTIONS)


def llama_config(scale: str, vocab_size: int, **overrides):
    from transformers import LlamaConfig

    # SmolLM2's ids: <|im_start|> 1 as BOS, <|im_end|> 2 as EOS and pad
    return LlamaConfig(**{**dict(vocab_size=vocab_size, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2,
                                 pad_token_id=PAD), **SIZES[scale], **overrides})


def build_model_dir(path: Path, scale: str, vocab_size: int, device: str, seed: int = 0) -> dict:
    """Save a seeded Llama (bf16 on CUDA, float32 on CPU) and the SmolLM2 tokenizer files."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):  # the 1B model initialises in seconds on the GPU, minutes on a CPU
        model = LlamaForCausalLM(llama_config(scale, vocab_size))
    model = model.to(torch.bfloat16 if device == "cuda" else torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (TOKENIZER_DIR / name).exists():
            shutil.copy(TOKENIZER_DIR / name, path / name)
    return {"scale": scale, "vocab_size": vocab_size, "params": params, **SIZES[scale]}


def matmul_params(model) -> int:
    """Parameters in matmuls (the MFU numerator is 6 x this): all but the input embedding, a tied head once."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embedding, head = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    unique = {id(p): p.numel() for p in base.parameters()}
    return sum(unique.values()) - embedding.numel() + (head.numel() if head is embedding else 0)
