"""Preference data -> token ids for ORPO: layout detection, validation, tokenisation, truncation.

The entry point is ``prepare_preference_dataset``; the steps live in ``formats`` (row layouts to
text), ``validation`` (row checks) and ``tokenize`` (ids, BOS/EOS, truncation), which turns text
into ids with ``encoding`` (each distinct piece of text once) and ``bytelevel`` (GPT-2 byte-level
words split in Python, each distinct word through BPE once).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import datasets
import pyarrow.compute as pc
from datasets.fingerprint import Hasher

from . import bytelevel, encoding, formats, tokenize, validation
from .encoding import TextEncoder
from .formats import ACCEPTED_LAYOUTS, Layout, detect_layout, render_batch, split_message_prompt, split_text_prompt
from .tokenize import (
    BlankTokens,
    add_bos,
    check_length_limits,
    ensure_eos,
    split_prompt_ids,
    tokenize_batch,
    truncate_pair,
)
from .validation import validate_preference_dataset

__all__ = [
    "ACCEPTED_LAYOUTS",
    "OUTPUT_COLUMNS",
    "OUTPUT_FEATURES",
    "Layout",
    "PreferenceDataStats",
    "add_bos",
    "check_length_limits",
    "detect_layout",
    "ensure_eos",
    "prepare_preference_dataset",
    "render_batch",
    "split_message_prompt",
    "split_prompt_ids",
    "split_text_prompt",
    "truncate_pair",
    "validate_preference_dataset",
]

logger = logging.getLogger("merlina_orpo_plugin.data")

OUTPUT_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
_FLAG_COLUMNS = ("_prompt_cut", "_completion_cut")
# int32 halves the cache of a large dataset; token ids never reach 2**31.
OUTPUT_FEATURES = datasets.Features({name: datasets.List(datasets.Value("int32")) for name in OUTPUT_COLUMNS})
_MAP_FEATURES = datasets.Features({**OUTPUT_FEATURES, **{name: datasets.Value("bool") for name in _FLAG_COLUMNS}})


@dataclass(frozen=True)
class PreferenceDataStats:
    """What ``prepare_preference_dataset`` did; token counts are after BOS/EOS and truncation."""

    layout: str
    pairs: int
    truncated_pairs: int  # pairs where anything was cut
    prompt_truncated: int  # pairs whose prompt lost tokens from the left
    completion_truncated: int  # pairs where chosen or rejected lost tokens from the right
    max_prompt_tokens: int
    max_completion_tokens: int  # the longer of chosen / rejected
    max_sequence_tokens: int  # the longest prompt + completion row the collator will build


def prepare_preference_dataset(
    dataset: datasets.Dataset,
    tokenizer,
    *,
    max_length: int | None = 1024,
    max_prompt_length: int | None = 512,
    max_completion_length: int | None = None,
    num_proc: int | None = None,
    batch_size: int = 1000,
    source: str | None = None,
) -> tuple[datasets.Dataset, PreferenceDataStats]:
    """Tokenise preference pairs in any accepted layout (see ``ACCEPTED_LAYOUTS``).

    Returns a dataset with exactly the columns ``OUTPUT_COLUMNS`` and one row per input row:
    the prompt ids (starting with BOS when the tokenizer has one) and the chosen / rejected
    COMPLETION ids (ending with EOS), every ``prompt + completion`` at most ``max_length`` tokens
    (see ``truncate_pair``). Already tokenised rows are only validated and truncated. Raises
    ValueError naming the row, field and ``source`` for a bad row, before any tokenisation.
    """
    check_length_limits(max_length, max_prompt_length, max_completion_length)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    layout = detect_layout(dataset)
    validate_preference_dataset(dataset, layout, source=source, batch_size=batch_size)
    if len(dataset) == 0:  # `Dataset.map` skips empty datasets and would return no columns at all
        empty = datasets.Dataset.from_dict({name: [] for name in OUTPUT_COLUMNS}, features=OUTPUT_FEATURES)
        return empty, PreferenceDataStats(layout.value, 0, 0, 0, 0, 0, 0, 0)
    limits = dict(
        max_length=max_length, max_prompt_length=max_prompt_length, max_completion_length=max_completion_length
    )
    tokenised = dataset.map(
        tokenize_batch,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        num_proc=num_proc,
        remove_columns=dataset.column_names,  # other columns are not carried: the output is ids only
        features=_MAP_FEATURES,
        fn_kwargs=dict(
            layout=layout,
            tokenizer=tokenizer,
            is_blank=BlankTokens(tokenizer),
            limits=limits,
            source=source,
            encode=TextEncoder(tokenizer),
        ),
        desc="Tokenising preference pairs",
        new_fingerprint=_fingerprint(dataset, tokenizer, layout, limits),
    )
    if len(tokenised) != len(dataset):  # map keeps rows 1:1; guard against a future change silently dropping any
        raise RuntimeError(f"tokenisation returned {len(tokenised)} rows for {len(dataset)} input rows")
    stats = _stats(tokenised, layout)
    _log(stats, source)
    return tokenised.remove_columns(list(_FLAG_COLUMNS)), stats


def _fingerprint(dataset: datasets.Dataset, tokenizer, layout: Layout, limits: dict) -> str:
    """The cache key of the tokenised dataset: everything the ids depend on.

    ``datasets`` would otherwise pickle the whole tokenizer through dill to hash it, about 1.5 s per
    call (twice here: the tokenizer and ``BlankTokens``), longer than tokenising thousands of pairs.
    A fast tokenizer's JSON plus its chat template and special tokens define its output; the module
    sources stand for the code, so an edit here never reuses a stale cache file.
    """
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
    code = [_source(module) for module in (bytelevel, encoding, formats, tokenize, validation)]
    return Hasher.hash((dataset._fingerprint, tokenizer_key, layout.value, sorted(limits.items()), code))


def _source(module) -> str:
    try:
        return inspect.getsource(module)
    except OSError:  # installed without sources (.pyc only): the file's identity is the best we have
        return f"{module.__name__}:{getattr(module, '__file__', '')}"


def _stats(tokenised: datasets.Dataset, layout: Layout) -> PreferenceDataStats:
    table = tokenised.data  # Arrow columns: counting here avoids converting every list to Python
    lengths = {name: pc.list_value_length(table.column(name)) for name in OUTPUT_COLUMNS}
    completion = pc.max_element_wise(lengths["chosen_input_ids"], lengths["rejected_input_ids"])
    prompt_cut, completion_cut = (table.column(name) for name in _FLAG_COLUMNS)

    def total(values) -> int:
        return int(pc.sum(pc.cast(values, "int64")).as_py() or 0)

    def largest(values) -> int:
        return int(pc.max(values).as_py() or 0)

    return PreferenceDataStats(
        layout=layout.value,
        pairs=len(tokenised),
        truncated_pairs=total(pc.or_(prompt_cut, completion_cut)),
        prompt_truncated=total(prompt_cut),
        completion_truncated=total(completion_cut),
        max_prompt_tokens=largest(lengths["prompt_input_ids"]),
        max_completion_tokens=largest(completion),
        max_sequence_tokens=largest(pc.add(lengths["prompt_input_ids"], completion)),
    )


def _log(stats: PreferenceDataStats, source: str | None) -> None:
    # A warning when text was cut: silent truncation is how long answers quietly stop being learnt.
    level = logging.WARNING if stats.truncated_pairs else logging.INFO
    logger.log(
        level,
        "%s: %d pairs (%s layout), %d truncated (%d prompts cut from the left, %d with completions cut); "
        "longest sequence %d tokens",
        source or "preference data",
        stats.pairs,
        stats.layout,
        stats.truncated_pairs,
        stats.prompt_truncated,
        stats.completion_truncated,
        stats.max_sequence_tokens,
    )
