"""The FlexAttention block mask: built from the dense rule, the same as `create_block_mask`'s, and the same attention.

`attention.block_mask` lists, per block of queries, the key blocks that are skipped, fully visible or
partly visible, straight from the dense mask. Checked against `create_block_mask` evaluating the same
rule block by block, and by running (uncompiled, on CPU) `flex_attention` with it against `sdpa` with
the dense boolean mask, on real collated layouts of mixed-length pairs.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from merlina_orpo_plugin.compute.attention import allowed_pairs, block_mask
from merlina_orpo_plugin.batch.collator import ORPODataCollator
from merlina_orpo_plugin.batch.packing import BatchLayout

BLOCK = 16  # small blocks, so that short rows span several of them and all three kinds occur


def _batch(layout: BatchLayout, seed: int):
    rng = random.Random(seed)
    features = [
        {
            "prompt_input_ids": [1] + [rng.randrange(3, 90) for _ in range(rng.randrange(3, 40))],
            "chosen_input_ids": [rng.randrange(3, 90) for _ in range(rng.randrange(1, 30))] + [2],
            "rejected_input_ids": [rng.randrange(3, 90) for _ in range(rng.randrange(1, 30))] + [2],
        }
        for _ in range(5)
    ]
    return ORPODataCollator(pad_token_id=0, layout=layout)(features)


LAYOUTS = [BatchLayout(s, p) for s, p in itertools.product((False, True), (False, True)) if s or p]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
def test_block_lists_match_create_block_mask(layout, seed):
    batch = _batch(layout, seed)
    ours = block_mask(batch["sequence_ids"], batch["branch_ids"], block=BLOCK)
    rows, width = batch["sequence_ids"].shape
    reference = create_block_mask(ours.mask_mod, B=rows, H=None, Q_LEN=width, KV_LEN=width, device="cpu",
                                  BLOCK_SIZE=BLOCK)
    for counts, indices, ref_counts, ref_indices in (
        (ours.kv_num_blocks, ours.kv_indices, reference.kv_num_blocks, reference.kv_indices),
        (ours.full_kv_num_blocks, ours.full_kv_indices, reference.full_kv_num_blocks, reference.full_kv_indices),
    ):
        assert torch.equal(counts, ref_counts)
        for row, head, q_block in itertools.product(range(rows), range(1), range(counts.shape[-1])):
            n = int(counts[row, head, q_block])
            assert sorted(indices[row, head, q_block, :n].tolist()) == sorted(ref_indices[row, head, q_block, :n].tolist())
    visited = (ours.kv_num_blocks + ours.full_kv_num_blocks).sum().item()  # partial + full blocks
    assert 0 < visited < rows * ours.kv_num_blocks.shape[-1] ** 2, "the layout must leave some blocks out"
    assert ours.full_kv_num_blocks.sum() > 0 or width < 2 * BLOCK


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
def test_flex_attention_with_it_equals_sdpa_with_the_dense_mask(layout):
    batch = _batch(layout, seed=2)
    rows, width = batch["sequence_ids"].shape
    torch.manual_seed(0)
    q, k, v = (torch.randn(rows, 2, width, 8) for _ in range(3))
    dense = allowed_pairs(batch["sequence_ids"], batch["branch_ids"])[:, None]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    got = flex_attention(q, k, v, block_mask=block_mask(batch["sequence_ids"], batch["branch_ids"], block=BLOCK))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
