"""Preference data -> token ids for ORPO: the package face; each step lives in its own module.

- ``pipeline``: ``prepare_preference_dataset`` (the Python API) and ``tokenise_checked`` (rows a
  strategy already mapped and checked): layout -> check once -> render, tokenise, truncate -> count.
- ``layouts``: the row layouts, and their detection when nobody declared one.
- ``validation``: the structural check of one row, run once per row; ``CheckedPairs``.
- ``formats``: rows -> prompt and full texts (implicit prompts split, chat templates rendered).
- ``tokenize``: the token-prefix prompt split, BOS/EOS, truncation; ``encoding`` (each distinct
  piece of text encoded once) and ``bytelevel`` (GPT-2 byte-level words split in Python) under it.
- ``seq2seq``: the encoder-decoder tokenisation (prompt for the encoder, completions as decoder labels).
- ``stats``: what a prepared dataset holds, counted and logged.
- ``fingerprint``: the cache key of a tokenised dataset.
"""

from __future__ import annotations

from .formats import render_batch, split_message_prompt, split_text_prompt
from .layouts import ACCEPTED_LAYOUTS, Layout, detect_layout
from .pipeline import OUTPUT_COLUMNS, OUTPUT_FEATURES, prepare_preference_dataset, tokenise_checked
from .stats import PreferenceDataStats
from .tokenize import add_bos, ensure_eos, split_prompt_ids, truncate_pair
from .validation import CheckedPairs, check_row, validate_preference_dataset

__all__ = [
    "ACCEPTED_LAYOUTS",
    "OUTPUT_COLUMNS",
    "OUTPUT_FEATURES",
    "CheckedPairs",
    "Layout",
    "PreferenceDataStats",
    "add_bos",
    "check_row",
    "detect_layout",
    "ensure_eos",
    "prepare_preference_dataset",
    "render_batch",
    "split_message_prompt",
    "split_prompt_ids",
    "split_text_prompt",
    "tokenise_checked",
    "truncate_pair",
    "validate_preference_dataset",
]
