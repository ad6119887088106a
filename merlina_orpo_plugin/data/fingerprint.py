"""The cache key of a tokenised dataset: everything its ids depend on, hashed.

``datasets`` would otherwise pickle the whole tokenizer through dill to hash it, about 1.5 s per
call (twice per call of the pipeline: the tokenizer and ``BlankTokens``), longer than tokenising
thousands of pairs. A fast tokenizer's JSON plus its chat template and special tokens define its
output; the sources of the modules that shape the ids stand for the code, so an edit of any of
them never reuses a stale cache file.
"""

from __future__ import annotations

import inspect
import pkgutil
from importlib import import_module

import datasets
from datasets.fingerprint import Hasher

from .layouts import Layout



def source_text(module) -> str:
    """A module's source, or its file's identity when installed without sources (.pyc only)."""
    try:
        return inspect.getsource(module)
    except OSError:
        return f"{module.__name__}:{getattr(module, '__file__', '')}"


def package_sources(package: str) -> list[str]:
    """The sources of ``package`` and of every module in it, found on disk: a module added later counts
    without anyone listing it."""
    module = import_module(package)
    names = sorted(info.name for info in pkgutil.iter_modules(module.__path__))
    return [source_text(module), *(source_text(import_module(f"{package}.{name}")) for name in names)]


def code_sources() -> list[str]:
    """The sources of this package's modules, which decide the ids, the flags and what is refused: part
    of every key, so that new code never reads old output."""
    return package_sources(__package__)


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
