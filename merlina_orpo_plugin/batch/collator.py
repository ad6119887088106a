"""Collate tokenised preference pairs into the tensors of one micro-batch, in one fixed layout (`batch.packing`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .orpo_batch import ORPOBatch, owner_counts
from .packing import PADDED, BatchLayout, encoder_decoder_rows, pack

#: The training dataset's row index column (`nonfinite.with_row_index`): a batch's ``row_ids`` come from it.
ROW_COLUMN = "merlina_row"


@dataclass(frozen=True)
class ORPODataCollator:
    """``B`` pairs -> input rows plus the list of scored tokens, in ``layout``.

    Input features carry ``prompt_input_ids``, ``chosen_input_ids`` and ``rejected_input_ids``
    (completions without the prompt), as `prepare_preference_dataset` writes them.

    Output: an `ORPOBatch` (``R`` rows of ``W`` tokens, ``N`` scored tokens), read like a dict::

        input_ids, attention_mask (1 on real tokens), position_ids          [R, W]
        sequence_ids (attention segment, -1 on padding), branch_ids          [R, W]
            (0 prompt, 1 chosen, 2 rejected: rejected tokens never see chosen ones)
        score_index (flat index into R*W of the predicting position)         [N]
        score_target (the token predicted), score_owner (which sequence)     [N]
        pair_lengths (prompt, chosen, rejected tokens of each pair)          [B, 3]
        row_ids (each pair's row in the training dataset, when its rows carry ``ROW_COLUMN``)  [B]

    An encoder-decoder layout (``layout.decoder_start`` set) gives instead ``input_ids`` and
    ``attention_mask`` ``[B, P]`` (each prompt once, for the encoder) and ``decoder_input_ids``
    ``[2B, L]`` (chosen rows then rejected rows), scored tokens indexing the decoder rows
    (`packing.encoder_decoder_rows`).

    Beside the tensors the batch holds, on the host, its ``layout`` (the `BatchLayout`) and
    ``scored_counts`` (scored tokens per owner, 3B ints, so the forward can plan chunks of whole
    pairs without waiting for the device); ``batch.to(device)`` moves the tensors only.

    The default layout is TRL's: ``prompt + chosen`` rows then ``prompt + rejected`` rows,
    right-padded. The trainer builds its collators from its speed plan (`speed.plan_speed`); the
    collator is frozen, so a batch's layout is the one it was built with. ``pack_length`` caps a
    packed row (default: twice the longest pair of the micro-batch).

    The constructor takes Axolotl's collator arguments (``tokenizer, padding, pad_to_multiple_of,
    return_tensors``) so the plugin can hand this class to Axolotl's trainer builder;
    ``pad_to_multiple_of`` applies to padded layouts only.
    """

    tokenizer: Any = None
    padding: bool | str = True
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"
    pad_token_id: int | None = None
    layout: BatchLayout = field(default=PADDED)
    pack_length: int | None = None

    def __post_init__(self):
        if self.pad_token_id is None:
            object.__setattr__(self, "pad_token_id", pad_id_of(self.tokenizer))
        if self.return_tensors != "pt":
            raise ValueError(f"ORPODataCollator returns PyTorch tensors only, got return_tensors={self.return_tensors!r}")
        if not isinstance(self.layout, BatchLayout):
            raise TypeError(f"`layout` must be a BatchLayout, got {type(self.layout).__name__}")

    def __call__(self, features: list[dict[str, Any]]) -> ORPOBatch:
        pairs = [
            (list(f["prompt_input_ids"]), list(f["chosen_input_ids"]), list(f["rejected_input_ids"]))
            for f in features
        ]
        tensors = self._rows(pairs)
        tensors["pair_lengths"] = torch.tensor([[len(p), len(c), len(r)] for p, c, r in pairs], dtype=torch.long)
        if features and ROW_COLUMN in features[0]:
            tensors["row_ids"] = torch.tensor([f[ROW_COLUMN] for f in features], dtype=torch.long)
        return ORPOBatch(tensors, self.layout, owner_counts(tensors["score_owner"].tolist(), len(pairs)))

    def _rows(self, pairs: list[tuple[list[int], list[int], list[int]]]) -> dict[str, torch.Tensor]:
        if self.layout.encoder_decoder:
            rows = encoder_decoder_rows(pairs, self.layout.decoder_start, self.pad_token_id)
            return {key: torch.tensor(value, dtype=torch.long) for key, value in rows.items()}
        packed = pack(
            pairs,
            self.layout,
            pad_token_id=self.pad_token_id,
            pad_to_multiple_of=self.pad_to_multiple_of,
            pack_length=self.pack_length,
        )
        sequence_ids = torch.tensor(packed.sequence_ids, dtype=torch.long)
        return {
            "input_ids": torch.tensor(packed.input_ids, dtype=torch.long),
            "attention_mask": (sequence_ids >= 0).long(),
            "position_ids": torch.tensor(packed.position_ids, dtype=torch.long),
            "sequence_ids": sequence_ids,
            "branch_ids": torch.tensor(packed.branch_ids, dtype=torch.long),
            "score_index": torch.tensor(packed.score_index, dtype=torch.long),
            "score_target": torch.tensor(packed.score_target, dtype=torch.long),
            "score_owner": torch.tensor(packed.score_owner, dtype=torch.long),
        }


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, or its EOS id when it has no pad token (as TRL pads)."""
    if tokenizer is None:
        raise ValueError("ORPODataCollator needs a tokenizer or an explicit pad_token_id")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token: pass pad_token_id to the collator")
    return pad
