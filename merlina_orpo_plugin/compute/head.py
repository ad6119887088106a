"""The LM head over one model pass: the log-prob of each scored token (`losses` sums them per sequence).

`score_pass` takes what `forward.run_model` returned and scores it in the way the run chose:
- the model's own logits (`kernels.score_logits`), where the loss is not chunked;
- chunked from the decoder's final hidden states (`kernels.chunked_token_logps`), the head called
  whole and the same number of times on every rank, as `model.head_sharding` found it sharded
  (`whole_head`, `equal_chunk_count`);
- fused with the loss (`kernels.fused_chunk_loss`): chunks of whole pairs, each chunk's loss given
  by the caller (``pair_loss``) and its gradients taken in the forward. Only for a trained head whole
  on this process; a frozen or sharded head, or a pair too long, takes the chunked path.
The model's facts (`model.adapter.ModelFacts`) come in found once per run: nothing here walks modules.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch

from ..batch.orpo_batch import ORPOBatch
from ..model.adapter import ModelFacts
from ..model.head_sharding import HeadSharding
from .kernels import chunked_token_logps, fused_chunk_loss, score_logits
from .losses import sequence_sums

if TYPE_CHECKING:
    from .forward import ModelPass

#: ``pair_loss(logp_sums [3, P], token_counts [3, P]) -> loss`` of some of the batch's pairs (chosen,
#: rejected, prompt rows), as a share of the batch's loss: the fused mode's loss of one chunk.
PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: A pair longer than this many chunks is scored by the chunked path (see `_pair_chunks`).
_LONGEST_FUSED = 4


class TokenScores(NamedTuple):
    """What `score_pass` returns: per scored token ``token_logps`` (log p(target)) and ``logit_means``
    (mean logit over the vocabulary), each token's ``owner`` sequence (`losses.sequence_scores` sums
    them per sequence), and the fused mode's ``loss`` (the token scores then detached), else None."""

    token_logps: torch.Tensor
    logit_means: torch.Tensor
    owner: torch.Tensor
    loss: torch.Tensor | None


def score_pass(batch: ORPOBatch, run: ModelPass, facts: ModelFacts, chunk_size: int, *,
               pair_loss: PairLoss | None = None, nll_include_prompt: bool = True) -> TokenScores:
    """The scored tokens of ``run``: fused with ``pair_loss`` where given and the mode applies, chunked
    from the hidden states with ``chunk_size`` > 0, else from the model's logits (`TokenScores`)."""
    chunks = None
    if chunk_size > 0 and pair_loss is not None and _fused_applies(facts, run.output):
        chunks = _pair_chunks(batch, run, chunk_size, pair_loss, nll_include_prompt)
    if chunks is not None:
        index, targets, owner, bounds, chunk_loss = chunks
        selected = run.output.reshape(-1, run.output.shape[-1]).index_select(0, index)
        loss, token_logps, logit_means = fused_chunk_loss(facts.head, selected, targets, bounds, chunk_loss,
                                                          facts.postprocess, facts.head_params)
        return TokenScores(token_logps, logit_means, owner, loss)
    if chunk_size > 0:
        token_logps, logit_means = score_hidden(facts, run.output, run.index, run.targets, chunk_size)
    else:
        token_logps, logit_means = score_logits(run.output, run.index, run.targets)
    return TokenScores(token_logps, logit_means, run.owner, None)


def score_hidden(facts: ModelFacts, hidden: torch.Tensor, index: torch.Tensor, targets: torch.Tensor,
                 chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(target), mean logit)`` per scored token, from ``[R, W, H]`` hidden states of the model.

    ``index`` picks the predicting rows (flat into ``R * W``); the head runs ``chunk_size`` of them at a time.
    """
    sharding = facts.sharding
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    num_chunks = equal_chunk_count(sharding, selected.shape[0], chunk_size, selected.device)
    recompute = facts.head_trained if sharding.gradients_in_forward_allowed else True
    with whole_head(sharding, backward_follows=torch.is_grad_enabled() and hidden.requires_grad) as call:
        return chunked_token_logps(call, selected, targets, chunk_size, facts.postprocess, recompute, num_chunks)


def _fused_applies(facts: ModelFacts, hidden: torch.Tensor) -> bool:
    """Whether the loss's gradients can be taken in the forward: a pass a backward will follow, through
    a head the run's facts say is trained and whole on this process (`model.adapter.ModelFacts.fuses`)."""
    return torch.is_grad_enabled() and hidden.requires_grad and facts.fuses


def _pair_chunks(batch: ORPOBatch, run: ModelPass, chunk_size: int, pair_loss: PairLoss, nll_include_prompt: bool):
    """The scored tokens grouped by pair (a stable sort on the device, no sync) and chunks of whole
    pairs of about ``chunk_size`` tokens (from the collator's host-side counts), with each chunk's loss.

    None when a single pair has more than ``_LONGEST_FUSED * chunk_size`` scored tokens: its chunk's
    logits would outgrow what chunking is for, and the chunked path takes the batch.
    """
    num_pairs = batch["pair_lengths"].shape[0]
    host = list(batch.scored_counts)
    if not nll_include_prompt:
        host[2 * num_pairs :] = [0] * num_pairs
    per_pair = [host[i] + host[num_pairs + i] + host[2 * num_pairs + i] for i in range(num_pairs)]
    if max(per_pair) > _LONGEST_FUSED * chunk_size:
        return None
    order = torch.argsort(run.owner % num_pairs, stable=True)
    index, targets, owner = run.index[order], run.targets[order], run.owner[order]
    bounds, pair_slices, start, first, size = [], {}, 0, 0, 0
    for pair in range(num_pairs):
        size += per_pair[pair]
        if size >= chunk_size or pair == num_pairs - 1:
            bounds.append((start, start + size))
            pair_slices[start] = slice(first, pair + 1)
            start, first, size = start + size, pair + 1, 0
    # Counted on the device, as `losses.sequence_scores` does: a tensor built from the host list would be a
    # pageable host-to-device copy, which waits for the decoder forward just queued.
    counts = sequence_sums(torch.ones_like(owner, dtype=torch.float32), owner, 3 * num_pairs).view(3, num_pairs)

    def chunk_loss(logps: torch.Tensor, chunk_start: int, chunk_end: int) -> torch.Tensor:
        pairs = pair_slices[chunk_start]
        sums = sequence_sums(logps, owner[chunk_start:chunk_end], 3 * num_pairs).view(3, num_pairs)
        return pair_loss(sums[:, pairs], counts[:, pairs])

    return index, targets, owner, bounds, chunk_loss


@contextmanager
def whole_head(sharding: HeadSharding, backward_follows: bool):
    """Yield what to call as the head (``sharding.call``), with the FSDP2 units around it unsharded.

    A head that is an FSDP2 unit is yielded wrapped (`model.head_sharding._WithoutUnitHooks`) and its
    unit unsharded too; without FSDP2 the head itself is yielded. ``backward_follows``: a backward
    through the head will run (training); FSDP reshards the units after it. Otherwise the units this
    call unsharded are resharded when the body ends.
    """
    gathered = [unit for unit, own in sharding.units if _is_sharded(own)]
    for unit in gathered:
        unit.unshard()
    try:
        yield sharding.call
    finally:
        if not backward_follows:
            for unit in gathered:
                unit.reshard()


def equal_chunk_count(sharding: HeadSharding, rows: int, chunk_size: int, device: torch.device) -> int | None:
    """The most ``chunk_size`` chunks any rank needs, where each head call is a collective; else None.

    One all-reduce of one number per forward; every rank then calls the head that many times,
    its rows split into near-equal chunks (none larger than ``chunk_size``, some maybe empty).
    """
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1):
        return None
    if not sharding.per_call:
        return None
    count = torch.tensor([max(1, -(-rows // chunk_size))], device=device)
    distributed.all_reduce(count, op=distributed.ReduceOp.MAX)
    return int(count.item())


def _is_sharded(own_modules: tuple[torch.nn.Module, ...]) -> bool:
    """Whether a unit's own parameters (those of ``own_modules``: `model.head_sharding._own_modules`) are
    DTensor shards now."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for module in own_modules for p in module.parameters(recurse=False))
