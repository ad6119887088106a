"""Collate tokenised preference pairs into one padded batch of chosen rows then rejected rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ORPODataCollator:
    """Stack ``B`` pairs into ``2B`` right-padded rows: ``prompt + chosen`` then ``prompt + rejected``.

    Input features carry ``prompt_input_ids``, ``chosen_input_ids`` and ``rejected_input_ids``
    (completions without the prompt), as `prepare_preference_dataset` writes them.

    Two pairs, pad id 0::

        pair 0: prompt [5, 6],    chosen [7, 2],    rejected [8, 9, 2]
        pair 1: prompt [5, 6, 4], chosen [3, 2],    rejected [2]

        input_ids        attention_mask   completion_mask
        [5, 6, 7, 2, 0]  [1, 1, 1, 1, 0]  [0, 0, 1, 1, 0]   chosen 0
        [5, 6, 4, 3, 2]  [1, 1, 1, 1, 1]  [0, 0, 0, 1, 1]   chosen 1
        [5, 6, 8, 9, 2]  [1, 1, 1, 1, 1]  [0, 0, 1, 1, 1]   rejected 0
        [5, 6, 4, 2, 0]  [1, 1, 1, 1, 0]  [0, 0, 0, 1, 0]   rejected 1

    The constructor takes Axolotl's collator arguments (``tokenizer, padding, pad_to_multiple_of,
    return_tensors``) so the plugin can hand this class to Axolotl's trainer builder.
    """

    tokenizer: Any = None
    padding: bool | str = True
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.pad_token_id is None:
            self.pad_token_id = _pad_id_of(self.tokenizer)
        if self.return_tensors != "pt":
            raise ValueError(f"ORPODataCollator returns PyTorch tensors only, got return_tensors={self.return_tensors!r}")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [list(f["prompt_input_ids"]) for f in features]
        rows, completion_starts = [], []
        for side in ("chosen_input_ids", "rejected_input_ids"):
            for prompt, feature in zip(prompts, features):
                rows.append(prompt + list(feature[side]))
                completion_starts.append(len(prompt))
        width = max(len(row) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, start) in enumerate(zip(rows, completion_starts)):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
            completion_mask[i, start : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def _pad_id_of(tokenizer: Any) -> int:
    if tokenizer is None:
        raise ValueError("ORPODataCollator needs a tokenizer or an explicit pad_token_id")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token: pass pad_token_id to the collator")
    return pad
