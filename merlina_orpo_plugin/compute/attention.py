"""Attention masks for the shared-prompt and packed layouts, per attention implementation.

The rule, from the collator's ``sequence_ids`` / ``branch_ids``: query ``q`` sees key ``k`` when
both are in the same segment, ``k`` is not after ``q``, and not (``q`` is a rejected token and ``k``
a chosen one). Padding sees only itself, so no softmax row is empty.

* ``sdpa``: a boolean ``[R, 1, W, W]`` mask (True = attend);
* ``eager``: the same as an additive float mask (0 or the dtype's minimum);
* ``flex_attention``: a FlexAttention ``BlockMask``: fully masked blocks (other pairs, the chosen
  block under the rejected rows) are skipped and fully visible ones run without evaluating the rule.
  The block lists come straight from the dense rule (``block_mask``), a few elementwise passes on the
  device, instead of ``create_block_mask``'s per-block evaluation; the rule itself stays the
  ``mask_mod`` the kernel applies inside partly visible blocks.

Flash-attention kernels take no mask at all: on CUDA the trainer runs these layouts on FlexAttention
instead (`speed.plan_speed`); elsewhere it falls back to the padded layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batch.packing import CHOSEN, PROMPT, REJECTED

#: FlexAttention's block size (``torch.nn.attention.flex_attention._DEFAULT_SPARSE_BLOCK_SIZE``).
FLEX_BLOCK = 128

#: Attention implementations that accept the masks built here.
CUSTOM_MASK_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")


def allowed_pairs(sequence_ids: torch.Tensor, branch_ids: torch.Tensor) -> torch.Tensor:
    """``[R, W, W]`` boolean: may query ``q`` (dim 1) attend to key ``k`` (dim 2)."""
    width = sequence_ids.shape[-1]
    q_seq, k_seq = sequence_ids[:, :, None], sequence_ids[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=sequence_ids.device).tril()
    cross = (branch_ids[:, :, None] == REJECTED) & (branch_ids[:, None, :] == CHOSEN)
    allowed = (q_seq == k_seq) & (q_seq >= 0) & causal & ~cross
    return allowed | torch.eye(width, dtype=torch.bool, device=sequence_ids.device)


def build_attention_mask(
    sequence_ids: torch.Tensor, branch_ids: torch.Tensor, implementation: str, dtype: torch.dtype
):
    """The ``attention_mask`` argument the model's ``implementation`` needs for this layout."""
    if implementation == "flex_attention":
        return block_mask(sequence_ids, branch_ids)
    allowed = allowed_pairs(sequence_ids, branch_ids)[:, None]
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    raise ValueError(
        f"attention implementation {implementation!r} cannot take a custom mask; "
        f"use one of {CUSTOM_MASK_IMPLEMENTATIONS} or turn prefix_sharing and padding_free off"
    )


def block_mask(sequence_ids: torch.Tensor, branch_ids: torch.Tensor, block: int = FLEX_BLOCK):
    """The FlexAttention ``BlockMask`` of the rule, its block lists computed from the dense mask.

    Per ``block x block`` tile: no allowed pair -> skipped, all pairs allowed -> a full block (no
    ``mask_mod`` call), otherwise partial. Rows are padded to a whole number of blocks with padding
    tokens (segment -1), so the ``mask_mod`` never indexes past the row.
    """
    from torch.nn.attention.flex_attention import BlockMask

    rows, width = sequence_ids.shape
    blocks = -(-width // block)
    pad = blocks * block - width
    sequence_ids = F.pad(sequence_ids, (0, pad), value=-1)
    branch_ids = F.pad(branch_ids, (0, pad), value=PROMPT)
    tiles = allowed_pairs(sequence_ids, branch_ids).view(rows, blocks, block, blocks, block)
    some = tiles.any(dim=4).any(dim=2)  # [R, q blocks, kv blocks]
    every = tiles.all(dim=4).all(dim=2)
    partial = some & ~every

    def lists(chosen: torch.Tensor):
        counts = chosen.sum(-1, dtype=torch.int32)
        indices = torch.argsort(~chosen, dim=-1, stable=True).to(torch.int32)  # the chosen blocks first, in order
        return counts[:, None], indices[:, None]

    def mask_mod(b, h, q, k):
        same = (sequence_ids[b, q] == sequence_ids[b, k]) & (sequence_ids[b, q] >= 0)
        cross = (branch_ids[b, q] == REJECTED) & (branch_ids[b, k] == CHOSEN)
        return (same & (k <= q) & ~cross) | (q == k)

    (kv_num, kv_index), (full_num, full_index) = lists(partial), lists(every)
    return BlockMask.from_kv_blocks(
        kv_num, kv_index, full_num, full_index, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(width, width)
    )
