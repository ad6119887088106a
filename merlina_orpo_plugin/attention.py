"""Attention masks for the shared-prompt and packed layouts, per attention implementation.

The rule, from the collator's ``sequence_ids`` / ``branch_ids``: query ``q`` sees key ``k`` when
both are in the same segment, ``k`` is not after ``q``, and not (``q`` is a rejected token and ``k``
a chosen one). Padding sees only itself, so no softmax row is empty.

* ``sdpa``: a boolean ``[R, 1, W, W]`` mask (True = attend);
* ``eager``: the same as an additive float mask (0 or the dtype's minimum);
* ``flex_attention``: a FlexAttention ``BlockMask`` built from the same rule as a ``mask_mod``,
  so fully masked blocks (other pairs, the chosen block under the rejected rows) are skipped.

Flash-attention kernels take no mask at all: the trainer falls back to the padded layout there.
"""

from __future__ import annotations

import torch

from .packing import CHOSEN, REJECTED

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
        return _block_mask(sequence_ids, branch_ids)
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


def _block_mask(sequence_ids: torch.Tensor, branch_ids: torch.Tensor):
    from torch.nn.attention.flex_attention import create_block_mask

    rows, width = sequence_ids.shape

    def mask_mod(b, h, q, k):
        same = (sequence_ids[b, q] == sequence_ids[b, k]) & (sequence_ids[b, q] >= 0)
        cross = (branch_ids[b, q] == REJECTED) & (branch_ids[b, k] == CHOSEN)
        return (same & (k <= q) & ~cross) | (q == k)

    return create_block_mask(mask_mod, B=rows, H=None, Q_LEN=width, KV_LEN=width, device=sequence_ids.device)
