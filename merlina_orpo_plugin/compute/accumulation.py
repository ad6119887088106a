"""Exact gradient accumulation: the scales that make ``k`` micro-batches of ``b`` pairs one batch of ``k * b``.

`transformers.Trainer` divides each micro-batch's loss by the number of micro-batches, so a mean of
per-micro-batch token means (TRL) weights the tokens of short micro-batches up. Here the NLL sum is
divided by the whole window's NLL token count and the odds-ratio sum by its pair count, then
multiplied back by the number of micro-batches (and processes, under DDP's gradient average): the
window's gradient is then exactly one big batch's. Outside a window (evaluation, a loss computed by
hand) the scales are the batch's own means. Both the plain and the fused loss use `loss_scales`.
"""

from __future__ import annotations

import torch

from .forward import nll_token_count


def window_totals(batches: list[dict], nll_include_prompt: bool, device) -> torch.Tensor:
    """``[NLL tokens, pairs]`` of an accumulation window, float64 on ``device``; no host sync."""
    tokens = sum(nll_token_count(batch, nll_include_prompt).to(device, torch.float64) for batch in batches)
    pairs = float(sum(batch["pair_lengths"].shape[0] for batch in batches))
    return torch.stack([tokens, torch.tensor(pairs, dtype=torch.float64, device=device)])


def loss_scales(batch: dict, nll_include_prompt: bool, window=None, steps: float = 1.0):
    """``(nll_scale, or_scale)``: ``loss = nll_sum * nll_scale - sum(beta * logsigmoid(log_odds)) * or_scale``.

    ``window``: ``(totals, processes)`` from `window_totals` (None: the batch's own means);
    ``steps``: the window's micro-batches.
    """
    if window is None:
        tokens = nll_token_count(batch, nll_include_prompt).float().clamp(min=1)
        return 1.0 / tokens, 1.0 / batch["pair_lengths"].shape[0]
    (window_tokens, window_pairs), factor = window
    scale = steps * factor
    return scale / window_tokens.clamp(min=1), scale / window_pairs
