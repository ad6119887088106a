"""ORPODataCollator on hand-written ids: the exact tensors of each layout for a two-pair batch."""

from __future__ import annotations

import pytest

from merlina_orpo_plugin import ORPODataCollator
from merlina_orpo_plugin.batch.packing import BatchLayout, balance_rows

PAIRS = [
    {"prompt_input_ids": [5, 6], "chosen_input_ids": [7, 2], "rejected_input_ids": [8, 9, 2]},
    {"prompt_input_ids": [5, 6, 4], "chosen_input_ids": [3, 2], "rejected_input_ids": [2]},
]


def _scored(batch) -> list[tuple[int, int, int]]:
    """(predicting token id, target id, owner) of every scored token, in a layout-free form."""
    flat = batch["input_ids"].flatten().tolist()
    triples = zip(batch["score_index"].tolist(), batch["score_target"].tolist(), batch["score_owner"].tolist())
    return sorted((flat[i], t, o) for i, t, o in triples)


def test_trl_layout_pads_chosen_rows_then_rejected_rows():
    batch = ORPODataCollator(pad_token_id=0)(PAIRS)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2, 0], [5, 6, 4, 3, 2], [5, 6, 8, 9, 2], [5, 6, 4, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["pair_lengths"].tolist() == [[2, 2, 3], [3, 2, 1]]
    # Owners: 0/1 chosen of pair 0/1, 2/3 rejected, 4/5 prompt tokens (NLL only).
    assert batch["score_index"].tolist() == [0, 1, 2, 5, 6, 7, 8, 11, 12, 13, 17]
    assert batch["score_target"].tolist() == [6, 7, 2, 6, 4, 3, 2, 8, 9, 2, 2]
    assert batch["score_owner"].tolist() == [4, 0, 0, 5, 5, 1, 1, 2, 2, 2, 3]


def test_shared_prompt_row_masks_nothing_but_restarts_rejected_positions():
    batch = ORPODataCollator(pad_token_id=0, layout=BatchLayout(prefix_sharing=True))(PAIRS)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2, 8, 9, 2], [5, 6, 4, 3, 2, 2, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 3, 4], [0, 1, 2, 3, 4, 3, 0]]
    assert batch["branch_ids"].tolist() == [[0, 0, 1, 1, 2, 2, 2], [0, 0, 0, 1, 1, 2, 0]]
    assert batch["sequence_ids"].tolist() == [[0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, -1]]
    # The last prompt token (index 1, id 6) predicts the first chosen AND the first rejected token.
    assert (1, 7) in zip(batch["score_index"].tolist(), batch["score_target"].tolist())
    assert (1, 8) in zip(batch["score_index"].tolist(), batch["score_target"].tolist())


@pytest.mark.parametrize("prefix_sharing", [False, True])
@pytest.mark.parametrize("padding_free", [False, True])
def test_every_layout_scores_the_same_tokens(prefix_sharing, padding_free):
    reference = _scored(ORPODataCollator(pad_token_id=0)(PAIRS))
    batch = ORPODataCollator(pad_token_id=0, layout=BatchLayout(prefix_sharing, padding_free))(PAIRS)
    assert _scored(batch) == reference


def test_padding_free_shared_batch_is_one_row_without_padding():
    batch = ORPODataCollator(pad_token_id=0, layout=BatchLayout(True, True))(PAIRS)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2, 8, 9, 2, 5, 6, 4, 3, 2, 2]]
    assert batch["input_ids"].numel() == batch["pair_lengths"].sum()


def test_balance_rows_fills_few_even_rows():
    lengths = [5, 4, 3, 3, 1]
    rows = balance_rows(lengths, capacity=8)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]
    assert [sum(lengths[i] for i in row) for row in rows] == [8, 8]
    assert balance_rows([10, 2], capacity=4) == [[0], [1]]  # an item over capacity gets its own row
    assert balance_rows([3, 3, 3], capacity=100) == [[0, 1, 2]]


def test_pad_to_multiple_of_rounds_padded_layouts_only(tokenizer):
    padded = ORPODataCollator(tokenizer, pad_to_multiple_of=8)(PAIRS)
    assert padded["input_ids"].shape == (4, 8)
    assert (padded["input_ids"][0, 4:] == tokenizer.pad_token_id).all()
    packed = ORPODataCollator(tokenizer, pad_to_multiple_of=8, layout=BatchLayout(True, True))(PAIRS)
    assert packed["input_ids"].shape == (1, 13)


def test_needs_a_pad_id():
    with pytest.raises(ValueError, match="tokenizer or an explicit pad_token_id"):
        ORPODataCollator()
