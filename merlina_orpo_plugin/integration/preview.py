"""What `axolotl orpo-preview` prints: one tokenised pair as text, and length statistics.

Pure functions over token ids and counts (the tokenizer is only used to decode), so each is
tested with hand-written ids; `cli.py` runs the plugin's dataset pipeline and prints these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

RULE = "────"
PERCENTILES = (50, 90, 99)


def shorten(text: str, max_chars: int) -> str:
    """``text`` cut in the MIDDLE to about ``max_chars``: both ends stay, where templates go wrong."""
    if len(text) <= max_chars:
        return text
    cut = len(text) - max_chars
    head = (max_chars + 1) // 2
    return f"{text[:head]} […{cut} chars…] {text[len(text) - (max_chars - head):]}"


def token_list(ids: Sequence[int], tokenizer) -> str:
    """``1 '<|im_start|>', 198 '\\n'``: each id with its own decoded piece, quoted so spaces show."""
    return ", ".join(f"{i} {tokenizer.decode([i], skip_special_tokens=False)!r}" for i in ids)


def format_segment(name: str, ids: Sequence[int], tokenizer, *, max_chars: int = 600, edge: int = 4) -> str:
    """A marker line, the decoded text (special tokens kept) and the first / last ``edge`` ids."""
    text = shorten(tokenizer.decode(list(ids), skip_special_tokens=False), max_chars)
    if len(ids) <= 2 * edge:
        id_lines = [f"  ids: {token_list(ids, tokenizer)}"]
    else:
        id_lines = [f"  first {edge} ids: {token_list(ids[:edge], tokenizer)}",
                    f"  last {edge} ids:  {token_list(ids[-edge:], tokenizer)}"]
    # A text ending in "\n" (a generation prompt usually does) is not given a second one; the
    # id lines show the exact tokens either way.
    body = text if text.endswith("\n") else text + "\n"
    return f"{RULE} {name} ({len(ids)} tokens) {RULE}\n{body}" + "\n".join(id_lines)


def format_pair(
    prompt_ids: Sequence[int],
    chosen_ids: Sequence[int],
    rejected_ids: Sequence[int],
    tokenizer,
    *,
    max_chars: int = 600,
    edge: int = 4,
) -> str:
    """One pair as the model sees it: the prompt, then each completion that continues it.

    The completion ids are what the ORPO loss scores (prompt ids are only context), so the marker
    between prompt and completion is exactly where a chat template's generation prompt must end.
    """
    return "\n".join(
        format_segment(name, ids, tokenizer, max_chars=max_chars, edge=edge)
        for name, ids in (("prompt", prompt_ids), ("chosen", chosen_ids), ("rejected", rejected_ids))
    )


def percentile(values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile: the smallest value with at least ``q``% of ``values`` at or below it.

    A value that occurs in the data (no interpolation), so "p90 = 412" reads "90% of pairs have at
    most 412 tokens". ValueError on an empty sequence.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"`q` must be in (0, 100], got {q}")
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)), 1) - 1]


def length_table(lengths: Mapping[str, Sequence[int]], percentiles: Sequence[float] = PERCENTILES) -> str:
    """Token-count percentiles and maximum per column, one row each; "-" for an empty column."""
    names = [f"p{q:g}" for q in percentiles] + ["max"]
    width = max(len("tokens"), *(len(column) for column in lengths))
    rows = ["  " + "tokens".ljust(width) + "".join(name.rjust(8) for name in names)]
    for column, values in lengths.items():
        cells = [percentile(values, q) for q in percentiles] + [max(values)] if values else ["-"] * len(names)
        rows.append("  " + column.ljust(width) + "".join(str(cell).rjust(8) for cell in cells))
    return "\n".join(rows)


def pair_lengths(prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int]) -> dict[str, list[int]]:
    """Per-pair token counts; ``sequence`` is prompt + the longer completion, the longest row the
    collator builds for the pair (what `sequence_len` bounds)."""
    return {
        "prompt": list(prompt),
        "chosen": list(chosen),
        "rejected": list(rejected),
        "sequence": [p + max(c, r) for p, c, r in zip(prompt, chosen, rejected, strict=True)],
    }


def format_counts(stats, *, refused: int, skip_bad_rows: bool, bad_rows: Sequence[tuple[int, str]] = ()) -> str:
    """Pairs, refused rows (with the first reasons), truncations, empty completions and identical
    pairs, from ``PreferenceDataStats``."""
    if not refused:
        verdict = ""
    elif skip_bad_rows:
        verdict = " (skipped: `merlina_skip_bad_rows: true`)"
    else:
        verdict = " (training stops at the first; fix them or set `merlina_skip_bad_rows: true`)"
    lines = [
        f"  pairs: {stats.pairs}",
        f"  refused: {refused}{verdict}",
        *(f"    row {index}: {reason}" for index, reason in bad_rows),
        f"  truncated: {stats.truncated_pairs} (prompt cut: {stats.prompt_truncated}, "
        f"completion cut: {stats.completion_truncated})",
        f"  empty completions: {stats.empty_completions}" + (" (each trains its end token alone)"
                                                             if stats.empty_completions else ""),
        f"  identical chosen and rejected: {stats.identical_pairs}" + (" (they teach no preference)"
                                                                       if stats.identical_pairs else ""),
    ]
    if len(bad_rows) < refused:
        lines.insert(2 + len(bad_rows), f"    … and {refused - len(bad_rows)} more")
    return "\n".join(lines)
