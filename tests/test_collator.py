"""ORPODataCollator on hand-written ids: the exact tensors of the docstring's two-pair example."""

from __future__ import annotations

import pytest
import torch

from merlina_orpo_plugin import ORPODataCollator

PAIRS = [
    {"prompt_input_ids": [5, 6], "chosen_input_ids": [7, 2], "rejected_input_ids": [8, 9, 2]},
    {"prompt_input_ids": [5, 6, 4], "chosen_input_ids": [3, 2], "rejected_input_ids": [2]},
]


def test_two_pairs_exact_tensors():
    batch = ORPODataCollator(pad_token_id=0)(PAIRS)
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 2, 0],  # chosen 0: prompt + chosen, one pad
        [5, 6, 4, 3, 2],  # chosen 1: longest row, no pad
        [5, 6, 8, 9, 2],  # rejected 0
        [5, 6, 4, 2, 0],  # rejected 1
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_to_multiple_of_and_tokenizer_pad_id(tokenizer):
    batch = ORPODataCollator(tokenizer, pad_to_multiple_of=8)(PAIRS)
    assert batch["input_ids"].shape == (4, 8)
    assert batch["input_ids"][0, 4:].tolist() == [tokenizer.pad_token_id] * 4
    assert batch["attention_mask"][:, 5:].sum() == 0


def test_needs_a_pad_id():
    with pytest.raises(ValueError, match="needs a tokenizer or an explicit pad_token_id"):
        ORPODataCollator()
