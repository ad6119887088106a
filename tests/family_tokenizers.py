"""The real tokenizers of the model families, and the recipe each family trains with.

``make test`` fetches the tokenizers pinned in tests/assets/tokenizers.json into
.assets/tokenizers/<family>/ (tests/assets/fetch_tokenizers.py). A missing folder FAILS the test that
needs it: these tests are the only check of the prompt/completion split on real templates.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PINS = json.loads((REPO / "tests" / "assets" / "tokenizers.json").read_text())["families"]
ASSETS = REPO / ".assets" / "tokenizers"
RECIPES = REPO / "examples" / "yaml"

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
TESTED_FAMILIES = tuple(PINS)


def family_tokenizer_dir(family: str) -> Path:
    """.assets/tokenizers/<family>, or fail (not skip) naming the command that fetches it."""
    folder = ASSETS / family
    missing = [name for name in PINS[family]["files"] if not (folder / name).is_file()]
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
