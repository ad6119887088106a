"""The cache key of a tokenised dataset: everything its ids depend on, hashed.

``datasets`` would otherwise pickle the whole tokenizer through dill to hash it, about 1.5 s per
call (twice per call of the pipeline: the tokenizer and ``BlankTokens``), longer than tokenising
thousands of pairs. A fast tokenizer's JSON plus its chat template and special tokens define its
output; the sources of the modules that shape the ids stand for the code, so an edit of any of
them never reuses a stale cache file.
"""

from __future__ import annotations

import inspect
from importlib import import_module

import datasets
from datasets.fingerprint import Hasher

from .layouts import Layout

# The modules of this package whose code decides the ids, the flags or what is refused.
CODE_MODULES = ("bytelevel", "encoding", "formats", "layouts", "pipeline", "seq2seq", "stats", "tokenize", "validation")


def source_text(module) -> str:
    """A module's source, or its file's identity when installed without sources (.pyc only)."""
    try:
        return inspect.getsource(module)
    except OSError:
        return f"{module.__name__}:{getattr(module, '__file__', '')}"


def code_sources() -> list[str]:
    """The sources of ``CODE_MODULES``: part of every key, so that new code never reads old output."""
    return [source_text(import_module(f"{__package__}.{name}")) for name in CODE_MODULES]


def tokenised_fingerprint(dataset: datasets.Dataset, tokenizer, layout: Layout, limits: dict) -> str:
    """The ``new_fingerprint`` of the pipeline's ``Dataset.map``: input, tokenizer, layout, limits and code."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tokenizer_key = (
        (
            type(tokenizer).__qualname__,
            backend.to_str(),
            tokenizer.chat_template,
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
        )
        if backend is not None
        else tokenizer  # a slow tokenizer: let `datasets` hash all of it
    )
    return Hasher.hash((dataset._fingerprint, tokenizer_key, layout.value, sorted(limits.items()), code_sources()))
