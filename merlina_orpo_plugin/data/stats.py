"""What a prepared preference dataset holds, counted: pairs, truncation, empty completions, identical pairs.

``completion_flags`` marks each row of a ``Dataset.map`` batch beside its ids (how many of its two
completions are empty, whether chosen and rejected are the same); ``collect`` sums those flags and
the cut flags of ``tokenize.tokenize_batch`` over the Arrow columns into ``PreferenceDataStats``;
``report`` says it in one log line, a warning when text was cut or a pair teaches no preference.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import datasets
import pyarrow.compute as pc

from .formats import clean_messages, split_message_prompt, split_text_prompt
from .layouts import TOKEN_COLUMNS, Layout

logger = logging.getLogger("merlina_orpo_plugin.data")
# What an identical pair does to ORPO: log-odds ratio 0 for every weight, so only the NLL term learns.
IDENTICAL_NOTE = "they teach no preference: the odds-ratio term has no gradient on them, only the NLL learns"

# Per-row flags the pipeline's map writes beside the ids and drops once counted.
FLAG_FEATURES = datasets.Features(
    {
        "_prompt_cut": datasets.Value("bool"),
        "_completion_cut": datasets.Value("bool"),
        "_empty_completions": datasets.Value("int8"),  # 0, 1 or 2 of the row's completions
        "_identical": datasets.Value("bool"),
    }
)


@dataclass(frozen=True)
class PreferenceDataStats:
    """What ``prepare_preference_dataset`` did; token counts are after BOS/EOS and truncation."""

    layout: str
    pairs: int
    truncated_pairs: int  # pairs where anything was cut
    prompt_truncated: int  # pairs whose prompt lost tokens from the left
    completion_truncated: int  # pairs where chosen or rejected lost tokens from the right
    empty_completions: int  # chosen plus rejected completions with no text: each trains its end token alone
    identical_pairs: int  # pairs whose chosen and rejected are the same: no preference to learn
    max_prompt_tokens: int
    max_completion_tokens: int  # the longer of chosen / rejected
    max_sequence_tokens: int  # the longest prompt + completion row the collator will build


def _is_empty(completion: Any) -> bool:
    """A completion with no text: a blank string, or messages that are all blank with nothing else."""
    if isinstance(completion, str):
        return not completion.strip()
    return all(
        not message["content"].strip() and all(v is None for k, v in message.items() if k not in ("role", "content"))
        for message in completion
    )


def _completions(chosen: Any, rejected: Any, layout: Layout) -> tuple[Any, Any]:
    """The two completions of a checked row, as the tokeniser will split them."""
    if layout is Layout.IMPLICIT_TEXT:
        return split_text_prompt(chosen, rejected)[1:]
    if layout is Layout.IMPLICIT_CONVERSATIONAL:
        return split_message_prompt(clean_messages(chosen), clean_messages(rejected))[1:]
    if layout.uses_messages:
        return clean_messages(chosen), clean_messages(rejected)
    return chosen, rejected


def completion_flags(batch: Mapping[str, Sequence], layout: Layout) -> dict[str, list]:
    """``_empty_completions`` and ``_identical`` for each row of a batch of checked rows."""
    if layout is Layout.TOKENIZED:  # ids are checked to be non-empty; only identity can be told
        pairs = zip(batch["chosen_input_ids"], batch["rejected_input_ids"], strict=True)
        return {"_empty_completions": [0] * len(batch["chosen_input_ids"]),
                "_identical": [list(c) == list(r) for c, r in pairs]}
    empty, identical = [], []
    for chosen, rejected in zip(batch["chosen"], batch["rejected"], strict=True):
        chosen, rejected = _completions(chosen, rejected, layout)
        empty.append(int(_is_empty(chosen)) + int(_is_empty(rejected)))
        identical.append(chosen == rejected)
    return {"_empty_completions": empty, "_identical": identical}


def collect(tokenised: datasets.Dataset, layout: Layout) -> PreferenceDataStats:
    """The statistics of a tokenised dataset that still has its flag columns (``FLAG_FEATURES``)."""
    table = tokenised.data  # Arrow columns: counting here avoids converting every list to Python
    lengths = {name: pc.list_value_length(table.column(name)) for name in TOKEN_COLUMNS}
    completion = pc.max_element_wise(lengths["chosen_input_ids"], lengths["rejected_input_ids"])
    prompt_cut, completion_cut = table.column("_prompt_cut"), table.column("_completion_cut")

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
        empty_completions=total(table.column("_empty_completions")),
        identical_pairs=total(table.column("_identical")),
        max_prompt_tokens=largest(lengths["prompt_input_ids"]),
        max_completion_tokens=largest(completion),
        max_sequence_tokens=largest(pc.add(lengths["prompt_input_ids"], completion)),
    )


def empty_stats(layout: Layout) -> PreferenceDataStats:
    """The statistics of a dataset with no rows."""
    counts = {field.name: 0 for field in fields(PreferenceDataStats) if field.name != "layout"}
    return PreferenceDataStats(layout=layout.value, **counts)


def report(stats: PreferenceDataStats, source: str | None) -> None:
    """One log line; a warning when text was cut (silent truncation is how long answers quietly stop
    being learnt) or when pairs have the same chosen and rejected."""
    level = logging.WARNING if stats.truncated_pairs or stats.identical_pairs else logging.INFO
    logger.log(
        level,
        "%s: %d pairs (%s layout), %d truncated (%d prompts cut from the left, %d with completions cut); "
        "%d empty completions (trained as the end token alone); %d pairs with identical chosen and rejected%s; "
        "longest sequence %d tokens",
        source or "preference data",
        stats.pairs,
        stats.layout,
        stats.truncated_pairs,
        stats.prompt_truncated,
        stats.completion_truncated,
        stats.empty_completions,
        stats.identical_pairs,
        f" ({IDENTICAL_NOTE})" if stats.identical_pairs else "",
        stats.max_sequence_tokens,
    )
