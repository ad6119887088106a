"""Where each token of a micro-batch goes: rows, positions, attention segments and scored targets.

Pure Python over token-id lists; `ORPODataCollator` turns the result into tensors. Two switches
decide the layout (`BatchLayout`, from `ORPOConfig.prefix_sharing` / `padding_free`):

* neither: TRL's layout, ``2B`` right-padded rows ``prompt + chosen`` then ``prompt + rejected``;
* ``prefix_sharing``: one item ``[prompt, chosen, rejected]`` per pair, the prompt computed once;
  rejected tokens attend to the prompt and to themselves but not to the chosen tokens, and their
  positions restart right after the prompt (Wang & Hegde 2024, arXiv:2410.20305);
* ``padding_free``: items are packed several per row, each with positions from 0 and its own
  attention segment, rows balanced so that almost no padding is left.

Every scored token is listed explicitly as (flat index of the hidden state that predicts it,
target id, owner), so the loss never depends on the layout. Owners: ``i`` the chosen completion of
pair ``i``, ``B + i`` its rejected completion, ``2B + i`` its prompt (scored for the NLL only).
With a shared prompt the last prompt position predicts the first token of *both* completions.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

PROMPT, CHOSEN, REJECTED = 0, 1, 2


@dataclass(frozen=True)
class BatchLayout:
    """How a batch's rows are laid out; every collated batch carries one (`ORPOBatch.layout`).

    ``padded``: TRL's rows (``prefix_sharing`` and ``padding_free`` off), one sequence per row, a 2D
    padding mask. Every other decoder-only layout has rows holding more than one attention segment
    or branch and needs a custom mask (``custom_mask``). ``decoder_start`` set: an encoder-decoder
    batch (`encoder_decoder_rows`): ``B`` prompt rows for the encoder, ``2B`` decoder rows.
    """

    prefix_sharing: bool = False
    padding_free: bool = False
    decoder_start: int | None = None

    def __post_init__(self):
        if self.decoder_start is not None and (self.prefix_sharing or self.padding_free):
            raise ValueError("an encoder-decoder layout takes neither prefix_sharing nor padding_free")

    @property
    def encoder_decoder(self) -> bool:
        return self.decoder_start is not None

    @property
    def custom_mask(self) -> bool:
        return self.prefix_sharing or self.padding_free

    @property
    def name(self) -> str:
        return "encoder_decoder" if self.encoder_decoder else _LAYOUT_NAMES[(self.prefix_sharing, self.padding_free)]


_LAYOUT_NAMES = {
    (False, False): "padded",
    (True, False): "shared_prompt",
    (False, True): "packed",
    (True, True): "packed_shared_prompt",
}


PADDED = BatchLayout()


@dataclass
class Segment:
    tokens: list[int]
    branch: int  # PROMPT, CHOSEN or REJECTED
    first_position: int


@dataclass
class Item:
    """One attention segment: a whole pair (shared prompt) or one ``prompt + completion`` sequence."""

    pair: int
    segments: list[Segment]
    sequence: int = 0  # attention segment id, unique in the batch

    def __len__(self) -> int:
        return sum(len(s.tokens) for s in self.segments)


@dataclass
class PackedBatch:
    """The flat lists `ORPODataCollator` turns into tensors; rows are ``width`` tokens wide."""

    width: int
    rows: list[list[Item]]
    input_ids: list[list[int]] = field(default_factory=list)
    position_ids: list[list[int]] = field(default_factory=list)
    sequence_ids: list[list[int]] = field(default_factory=list)  # -1 on padding
    branch_ids: list[list[int]] = field(default_factory=list)
    score_index: list[int] = field(default_factory=list)
    score_target: list[int] = field(default_factory=list)
    score_owner: list[int] = field(default_factory=list)


def make_items(pairs: list[tuple[list[int], list[int], list[int]]], prefix_sharing: bool) -> list[Item]:
    """Shared: one item per pair. Otherwise all ``prompt + chosen`` items, then all ``prompt + rejected``."""
    if prefix_sharing:
        return [
            Item(i, [Segment(p, PROMPT, 0), Segment(c, CHOSEN, len(p)), Segment(r, REJECTED, len(p))], sequence=i)
            for i, (p, c, r) in enumerate(pairs)
        ]
    chosen = [Item(i, [Segment(p, PROMPT, 0), Segment(c, CHOSEN, len(p))]) for i, (p, c, _) in enumerate(pairs)]
    rejected = [Item(i, [Segment(p, PROMPT, 0), Segment(r, REJECTED, len(p))]) for i, (p, _, r) in enumerate(pairs)]
    items = chosen + rejected
    for i, item in enumerate(items):
        item.sequence = i
    return items


def balance_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Item indices per row: the fewest rows of at most ``capacity`` tokens, loads balanced.

    Longest item first onto the least-loaded row (LPT scheduling); when that overflows a row, one
    more row is opened and the assignment redone. An item longer than ``capacity`` gets a row of
    its own. Items keep their input order within a row.
    """
    capacity = max(capacity, max(lengths))
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows = max(1, -(-sum(lengths) // capacity))
    while True:
        heap = [(0, r) for r in range(rows)]
        assigned: list[list[int]] = [[] for _ in range(rows)]
        fits = True
        for i in order:
            load, r = heapq.heappop(heap)
            if load and load + lengths[i] > capacity:
                fits = False
                break
            assigned[r].append(i)
            heapq.heappush(heap, (load + lengths[i], r))
        if fits:
            return [sorted(row) for row in assigned if row]
        rows += 1


def pack(
    pairs: list[tuple[list[int], list[int], list[int]]],
    layout: BatchLayout,
    *,
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
    pack_length: int | None = None,
) -> PackedBatch:
    """Lay ``B`` pairs ``(prompt, chosen, rejected)`` out in rows and list every scored token.

    ``pack_length``: most tokens per packed row (``layout.padding_free`` only); None packs up to twice the
    longest item, which keeps rows short for dense attention masks while leaving almost no padding.
    ``pad_to_multiple_of`` rounds the width of padded layouts only (packed rows need no rounding).
    """
    items = make_items(pairs, layout.prefix_sharing)
    if layout.padding_free:
        lengths = [len(item) for item in items]
        capacity = pack_length or 2 * max(lengths)
        rows = [[items[i] for i in row] for row in balance_rows(lengths, capacity)]
    else:
        rows = [[item] for item in items]
    width = max(sum(len(item) for item in row) for row in rows)
    if pad_to_multiple_of and not layout.padding_free:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    out = PackedBatch(width=width, rows=rows)
    num_pairs = len(pairs)
    for r, row in enumerate(rows):
        ids, pos, seq, branch = [], [], [], []
        for item in row:
            _score_item(out, item, r * width + len(ids), num_pairs)
            for s in item.segments:
                ids += s.tokens
                pos += range(s.first_position, s.first_position + len(s.tokens))
                seq += [item.sequence] * len(s.tokens)
                branch += [s.branch] * len(s.tokens)
        pad = width - len(ids)
        out.input_ids.append(ids + [pad_token_id] * pad)
        out.position_ids.append(pos + [0] * pad)
        out.sequence_ids.append(seq + [-1] * pad)
        out.branch_ids.append(branch + [PROMPT] * pad)
    return out


def _score_item(out: PackedBatch, item: Item, start: int, num_pairs: int) -> None:
    """Append the scored tokens of ``item``, laid out from flat index ``start``.

    Position ``t`` predicts token ``t + 1`` of the same sequence; a completion's first token is
    predicted by the last prompt position. Prompt tokens are listed once per pair (from the item
    that holds the chosen completion), as TRL's NLL counts the chosen row's prompt.
    """
    prompt = item.segments[0]
    p = len(prompt.tokens)
    predictor_of_completion = start + p - 1 if p else None
    cursor = start + p
    has_chosen = any(s.branch == CHOSEN for s in item.segments)
    if has_chosen and p > 1:
        out.score_index += range(start, start + p - 1)
        out.score_target += prompt.tokens[1:]
        out.score_owner += [2 * num_pairs + item.pair] * (p - 1)
    for s in item.segments[1:]:
        owner = item.pair if s.branch == CHOSEN else num_pairs + item.pair
        n = len(s.tokens)
        if predictor_of_completion is not None and n:
            out.score_index.append(predictor_of_completion)
            out.score_target.append(s.tokens[0])
            out.score_owner.append(owner)
        if n > 1:
            out.score_index += range(cursor, cursor + n - 1)
            out.score_target += s.tokens[1:]
            out.score_owner += [owner] * (n - 1)
        cursor += n


def encoder_decoder_rows(
    pairs: list[tuple[list[int], list[int], list[int]]], decoder_start: int, pad_token_id: int
) -> dict[str, list]:
    """An encoder-decoder batch: each prompt once for the encoder, chosen then rejected decoder rows.

    As TRL's ``is_encoder_decoder`` path: a completion's ids are the decoder labels, its decoder
    input the labels shifted right behind ``decoder_start``; decoder position ``t`` predicts label
    ``t``. Unlike TRL, the encoder reads each prompt once (``B`` rows) and the forward repeats its
    output for the ``2B`` decoder rows, instead of encoding every prompt twice.
    """
    prompt_width = max(len(p) for p, _, _ in pairs)
    completions = [c for _, c, _ in pairs] + [r for _, _, r in pairs]
    width = max(map(len, completions))
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "decoder_input_ids": [],
                            "score_index": [], "score_target": [], "score_owner": []}
    for prompt, _, _ in pairs:
        pad = prompt_width - len(prompt)
        out["input_ids"].append(prompt + [pad_token_id] * pad)
        out["attention_mask"].append([1] * len(prompt) + [0] * pad)
    for row, labels in enumerate(completions):
        shifted = ([decoder_start] + labels)[:width]
        out["decoder_input_ids"].append(shifted + [pad_token_id] * (width - len(shifted)))
        out["score_index"] += range(row * width, row * width + len(labels))
        out["score_target"] += labels
        out["score_owner"] += [row] * len(labels)  # chosen i is row i, rejected i is row B + i
    return out
