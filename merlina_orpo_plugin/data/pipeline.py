"""The preference-data pipeline: layout -> check each row once -> render, tokenise, truncate -> count.

Two doors, one path. ``prepare_preference_dataset`` is the Python API: it takes the layout it is
told, or detects it from the columns when nobody declared one, and checks every row
(``validation``). ``tokenise_checked`` takes rows already checked (a ``CheckedPairs``, as the
Axolotl path builds while its strategies map the rows) and neither detects nor checks again. Both
end in one ``Dataset.map`` that renders (``formats``), tokenises and truncates (``tokenize``) and
flags each row for the statistics (``stats``), cached under ``fingerprint.tokenised_fingerprint``.
"""

from __future__ import annotations

from typing import Any

import datasets

from ..options import BY_NAME, check_options, prompt_floor
from .encoding import TextEncoder
from .fingerprint import tokenised_fingerprint
from .layouts import TOKEN_COLUMNS, Layout, detect_layout
from .seq2seq import tokenize_encoder_decoder_batch
from .stats import FLAG_FEATURES, PreferenceDataStats, collect, completion_flags, empty_stats, report
from .tokenize import BlankTokens, TurnEnds, tokenize_batch
from .validation import CheckedPairs, validate_preference_dataset

_MAX_LENGTH = BY_NAME["max_length"].default

# The output is the tokenized layout: a prepared dataset can be prepared again (only truncated).
OUTPUT_COLUMNS = TOKEN_COLUMNS
# int32 halves the cache of a large dataset; token ids never reach 2**31.
OUTPUT_FEATURES = datasets.Features({name: datasets.List(datasets.Value("int32")) for name in OUTPUT_COLUMNS})
_MAP_FEATURES = datasets.Features({**OUTPUT_FEATURES, **FLAG_FEATURES})


def prepare_preference_dataset(
    dataset: datasets.Dataset,
    tokenizer,
    *,
    layout: Layout | str | None = None,
    max_length: int | None = _MAX_LENGTH,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    num_proc: int | None = None,
    batch_size: int = 1000,
    source: str | None = None,
    encoder_decoder: bool = False,
) -> tuple[datasets.Dataset, PreferenceDataStats]:
    """Tokenise preference pairs in any accepted layout (see ``layouts.ACCEPTED_LAYOUTS``).

    ``layout``: a ``Layout`` or its name (a strategy's ``"text"`` is ``standard``); None detects it
    from the column names and types. Returns a dataset with exactly the columns ``OUTPUT_COLUMNS``
    and one row per input row: the prompt ids (starting with BOS when the tokenizer has one) and the
    chosen / rejected COMPLETION ids (ending with the end token; an empty completion is that token
    alone), every ``prompt + completion`` at most ``max_length`` tokens (see ``truncate_pair``).
    Already tokenised rows are only checked and truncated. Raises ValueError naming the row, field
    and ``source`` for a structurally bad row, before any tokenisation. ``max_prompt_length`` None
    is the options' rule (`options.prompt_floor`: half of ``max_length``). ``encoder_decoder``: the
    prompt and each completion tokenised apart, for the encoder and the decoder (``seq2seq``).
    """
    limits = _limits(max_length, max_prompt_length, max_completion_length, batch_size)
    layout = detect_layout(dataset) if layout is None else Layout.named(layout)
    checked = validate_preference_dataset(dataset, layout, source=source, batch_size=batch_size)
    return _tokenise(checked, tokenizer, limits, num_proc=num_proc, batch_size=batch_size,
                     encoder_decoder=encoder_decoder)


def tokenise_checked(
    checked: CheckedPairs,
    tokenizer,
    *,
    max_length: int | None = _MAX_LENGTH,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    num_proc: int | None = None,
    batch_size: int = 1000,
    encoder_decoder: bool = False,
) -> tuple[datasets.Dataset, PreferenceDataStats]:
    """``prepare_preference_dataset`` for rows already checked for their layout: no detection, no checks."""
    limits = _limits(max_length, max_prompt_length, max_completion_length, batch_size)
    return _tokenise(checked, tokenizer, limits, num_proc=num_proc, batch_size=batch_size,
                     encoder_decoder=encoder_decoder)


def _limits(max_length, max_prompt_length, max_completion_length, batch_size: int) -> dict[str, int | None]:
    """The length limits, checked by the one validator every entry point uses, the prompt floor resolved."""
    check_options(dict(max_length=max_length, max_prompt_length=max_prompt_length,
                       max_completion_length=max_completion_length))
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    return dict(max_length=max_length, max_prompt_length=prompt_floor(max_length, max_prompt_length),
                max_completion_length=max_completion_length)


def _tokenise(
    checked: CheckedPairs, tokenizer, limits: dict, *, num_proc: int | None, batch_size: int, encoder_decoder: bool
) -> tuple[datasets.Dataset, PreferenceDataStats]:
    dataset, layout, source = checked.dataset, checked.layout, checked.source
    if len(dataset) == 0:  # `Dataset.map` skips empty datasets and would return no columns at all
        empty = datasets.Dataset.from_dict({name: [] for name in OUTPUT_COLUMNS}, features=OUTPUT_FEATURES)
        return empty, empty_stats(layout)
    tokenised = dataset.map(
        _prepare_batch,
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
            ends_turn=TurnEnds(tokenizer),
            limits=limits,
            source=source,
            encode=TextEncoder(tokenizer),
            encoder_decoder=encoder_decoder,
        ),
        desc="Tokenising preference pairs",
        new_fingerprint=tokenised_fingerprint(dataset, tokenizer, layout, {**limits, "encoder_decoder": encoder_decoder}),
    )
    if len(tokenised) != len(dataset):  # map keeps rows 1:1; guard against a future change silently dropping any
        raise RuntimeError(f"tokenisation returned {len(tokenised)} rows for {len(dataset)} input rows")
    stats = collect(tokenised, layout)
    report(stats, source)
    return tokenised.remove_columns(list(FLAG_FEATURES)), stats


def _prepare_batch(
    batch: dict[str, list], indices: list[int], *, layout: Layout, encoder_decoder: bool, **tokenize_kwargs
) -> dict[str, Any]:
    """The map function: ids and cut flags (``tokenize_batch``) plus the statistics flags."""
    tokenize = tokenize_encoder_decoder_batch if encoder_decoder else tokenize_batch
    return {**tokenize(batch, indices, layout=layout, **tokenize_kwargs), **completion_flags(batch, layout)}
