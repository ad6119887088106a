"""Kernels: per-token log-probs of scored tokens, from full logits or in chunks from hidden states.

Tensors and a head module in, log-probs (and their gradients) out: nothing here knows about models
(`model.adapter` finds the head, its trainable parameters and the hidden states, once per run). The chunked
path never holds the ``[tokens, V]`` logits at once: the head runs on ``chunk_size`` rows at a time. A trained
head is checkpointed per chunk (backward recomputes one chunk's logits at a time); a frozen head's per-row
gradients are taken in the forward (``_FrozenHeadLogps``), so nothing is recomputed. When the loss itself is a
sum over chunks (``fused_chunk_loss``: chunks of whole pairs), a trained head needs no recompute either: each
chunk's gradients are taken in the forward, the head's summed into one buffer per parameter that becomes its
``.grad``. Peak memory of the loss is ``O(chunk_size * V)`` instead of ``O(2B * T * V)``. The unchunked path
(``score_logits``) scores the model's own logits without copying them (``_FullLogitsLogps``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from .losses import token_log_probs


def _score_chunk(head, postprocess, hidden: torch.Tensor, targets: torch.Tensor):
    logits = head(hidden)
    if postprocess is not None:
        logits = postprocess(logits)
    logits = logits.float()  # the log-softmax over a large vocabulary needs float32 (see forward.py)
    return token_log_probs(logits, targets), logits.detach().mean(-1)


def chunked_token_logps(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    recompute: bool | None = None,
    num_chunks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(target), mean logit)`` for ``[N, H]`` hidden states, ``head`` applied ``chunk_size`` rows at a time.

    Under autograd at most one chunk's ``[chunk_size, V]`` logits (and their gradient) exist at once:
    - a head with trainable weights (full fine-tuning, LoRA on the head): each chunk is checkpointed,
      its logits freed after the forward and recomputed in backward;
    - a frozen head (LoRA / QLoRA elsewhere, the usual case): each chunk's gradient with respect to
      its hidden states is computed right away in the forward (``_FrozenHeadLogps``), so backward
      is one multiplication and the chunk's logits are computed once instead of twice.
    ``recompute`` None picks by the head (trainable weights or not; `model.adapter` passes what it found
    once per run); True forces the checkpointed path (benchmarks compare them).
    ``num_chunks``: make exactly this many head calls (near-equal chunks of at most ``chunk_size``
    rows, some maybe empty): where each head call is a collective (ZeRO-3), every rank makes the
    same calls (`compute.head.equal_chunk_count`).
    """
    if hidden.shape[0] == 0 and num_chunks is None:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    if not (torch.is_grad_enabled() and hidden.requires_grad):
        return _chunks(head, postprocess, hidden, targets, chunk_size, _score_chunk, num_chunks)
    if recompute is None:
        recompute = any(p.requires_grad for p in head.parameters())
    if not recompute:
        return _FrozenHeadLogps.apply(hidden, targets, head, postprocess, chunk_size, num_chunks)
    return _chunks(head, postprocess, hidden, targets, chunk_size, _checkpointed_chunk, num_chunks)


def _checkpointed_chunk(*chunk):
    return checkpoint(_score_chunk, *chunk, use_reentrant=False)


def _chunks(head, postprocess, hidden, targets, chunk_size, score, num_chunks=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``score`` on each ``chunk_size`` rows (or on ``num_chunks`` near-equal chunks), the results concatenated."""
    rows = hidden.shape[0]
    if num_chunks is None:
        starts = list(range(0, rows, chunk_size))
        ends = starts[1:] + [rows]
    else:
        ends = [rows * (i + 1) // num_chunks for i in range(num_chunks)]
        starts = [0] + ends[:-1]
    logps, means = [], []
    for start, end in zip(starts, ends):
        logp, mean = score(head, postprocess, hidden[start:end], targets[start:end])
        logps.append(logp)
        means.append(mean)
    return torch.cat(logps), torch.cat(means)


class _FrozenHeadLogps(torch.autograd.Function):
    """Chunked token log-probs whose backward needs no recompute, for a head without trainable weights.

    ``log p_i`` depends on hidden row ``i`` only, so the gradient of ``sum(log p)`` with respect to a
    chunk of rows is, row by row, ``d log p_i / d h_i``; the forward keeps these ``[N, H]`` rows
    (the size of the hidden states, not of the logits) and backward scales each by its incoming
    gradient. Same math as the checkpointed path (autograd computes the per-row gradient, so logit
    post-processing is included), one head matmul fewer per chunk.
    """

    @staticmethod
    def forward(ctx, hidden, targets, head, postprocess, chunk_size, num_chunks=None):
        gradients: list[torch.Tensor] = []

        def score_with_gradient(head, postprocess, rows, row_targets):
            with torch.enable_grad():
                rows = rows.detach().requires_grad_()
                logp, mean = _score_chunk(head, postprocess, rows, row_targets)
                (gradient,) = torch.autograd.grad(logp.sum(), rows)
            gradients.append(gradient)
            return logp.detach(), mean

        logps, means = _chunks(head, postprocess, hidden, targets, chunk_size, score_with_gradient, num_chunks)
        ctx.save_for_backward(torch.cat(gradients))
        ctx.mark_non_differentiable(means)
        return logps, means

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logps, _grad_means):
        (per_row,) = ctx.saved_tensors
        return (grad_logps.unsqueeze(-1) * per_row).to(per_row.dtype), None, None, None, None, None


def fused_chunk_loss(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    bounds: list[tuple[int, int]],
    chunk_loss: Callable[[torch.Tensor, int, int], torch.Tensor],
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    params: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, log p(target), mean logit)`` where ``loss`` is the sum of ``chunk_loss`` over ``bounds``.

    ``chunk_loss(logps, start, end)`` turns the log-probs of rows ``start:end`` into that chunk's
    share of the loss, which must not depend on any other row (chunks of whole pairs, for ORPO).
    Then each chunk's gradients, with respect to its hidden rows and to the head's trainable
    parameters, are exact in the forward: nothing is recomputed and no logits are kept, where the
    checkpointed path runs the head twice. The log-probs come back detached (the loss carries the
    gradient). Needs the head's parameters whole on this process (not sharded). ``params``: the head's
    trainable parameters, as found once per run (`model.adapter.ModelFacts`); None reads them off ``head``.
    """
    if params is None:
        params = [p for p in head.parameters() if p.requires_grad]
    return _FusedChunkLoss.apply(hidden, targets, head, postprocess, bounds, chunk_loss, *params)


class _FusedChunkLoss(torch.autograd.Function):
    """The chunked loss of a trained head with its gradients taken chunk by chunk in the forward.

    One buffer per trainable head parameter sums the chunks' gradients (`_linear_chunk` by hand for a
    plain linear head, else `_autograd_chunk`); backward scales it in place by the loss's incoming
    gradient and hands it to autograd, which adopts it as the ``.grad`` (or adds it to the ``.grad`` of
    earlier micro-batches): one head-sized tensor where a copy per chunk and a scaled copy were three.
    """

    @staticmethod
    def forward(ctx, hidden, targets, head, postprocess, bounds, chunk_loss, *params):
        linear = _plain_linear(head, postprocess, params, hidden.device)
        buffers: list[torch.Tensor | None] = [None] * len(params)
        row_grads, logps, means, total = [], [], [], hidden.new_zeros((), dtype=torch.float32)
        for start, end in bounds:
            score = lambda logp, start=start, end=end: chunk_loss(logp, start, end)  # noqa: E731
            chunk = (head, hidden[start:end].detach(), targets[start:end], score, buffers)
            out = _linear_chunk(*chunk, linear) if linear is not None else _autograd_chunk(*chunk, postprocess, params)
            loss, logp, mean, row_grad = out
            row_grads.append(row_grad)
            total = total + loss.detach().float()
            logps.append(logp.detach())
            means.append(mean)
        ctx.save_for_backward(torch.cat(row_grads))
        # on ctx, not saved: backward hands them over, nothing may hold them after it
        ctx.param_grads = [torch.zeros_like(p) if b is None else b for p, b in zip(params, buffers)]
        logps, means = torch.cat(logps), torch.cat(means)
        ctx.mark_non_differentiable(logps, means)
        return total, logps, means

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_logps, _grad_means):
        (per_row,) = ctx.saved_tensors
        per_param, ctx.param_grads = ctx.param_grads, None
        if per_param is None:
            raise RuntimeError("the fused chunk loss's backward ran twice (retain_graph=True): its head "
                               "gradients were handed to autograd the first time; use the checkpointed path")
        scale = grad_loss.float()
        # in place: the buffer becomes the gradient (same values as `g * scale`: the same kernel and dtypes)
        return ((per_row * scale).to(per_row.dtype), None, None, None, None, None,
                *(g.mul_(scale) for g in per_param))


def _accumulate(buffers: list, i: int, grad: torch.Tensor | None) -> None:
    if grad is not None:  # the first chunk's gradient becomes the buffer
        buffers[i] = grad if buffers[i] is None else buffers[i].add_(grad)


def _autograd_chunk(head, rows, targets, score, buffers, postprocess, params):
    """One chunk of `_FusedChunkLoss` through autograd: ``(loss, log p, mean logit, row gradients)``."""
    with torch.enable_grad():
        rows = rows.requires_grad_()
        logp, mean = _score_chunk(head, postprocess, rows, targets)
        loss = score(logp)
        grads = torch.autograd.grad(loss, [rows, *params], allow_unused=True)
    for i, grad in enumerate(grads[1:]):
        _accumulate(buffers, i, grad)
    return loss, logp, mean, grads[0]


#: Vocabulary rows of the weight's gradient made at a time when a chunk's share is added to the buffer.
_WEIGHT_BLOCK = 8192


def _plain_linear(head, postprocess, params, device: torch.device) -> list[str] | None:
    """The names (``weight``, ``bias``) of ``params`` where `_linear_chunk` can write their gradients: a
    hook-free ``nn.Linear`` head, no logit post-processing, no autocast; else None (autograd takes them)."""
    autocast = torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type)  # not meta's
    if (postprocess is not None or type(head) is not torch.nn.Linear or head._forward_hooks
            or head._forward_pre_hooks or autocast):
        return None
    own = {id(head.weight): "weight", **({id(head.bias): "bias"} if head.bias is not None else {})}
    names = [own.get(id(p)) for p in params]
    return None if None in names else names


def _linear_chunk(head, rows, targets, score, buffers, names):
    """One chunk of `_FusedChunkLoss` for a plain linear head, its gradients by hand.

    With ``z = rows @ W.T + b`` (float32), ``log p_i = z_iy - logsumexp(z_i)`` and ``g_i = dL/d log p_i``
    (autograd, on the ``[rows]`` log-probs only): ``dL/dz_i = g_i * (onehot(y_i) - softmax(z_i))``, made
    in place in the logits (one ``[rows, V]`` tensor where autograd's backward holds three at once);
    ``dL/d rows = dz @ W``; ``dL/dW = dz.T @ rows``, added to the buffer ``_WEIGHT_BLOCK`` vocabulary rows
    at a time (no second head-sized tensor); ``dL/db = dz.sum(0)``. These are autograd's own operations
    on the same values (`_score_chunk`'s backward), so the gradients are the same bit for bit.
    """
    weight = head.weight
    logits = torch.nn.functional.linear(rows, weight, head.bias).float()
    mean, lse = logits.mean(-1), torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    with torch.enable_grad():
        loss = score(logp.requires_grad_())
        (g,) = torch.autograd.grad(loss, logp)
    g = g.unsqueeze(-1)
    dz = logits.sub_(lse.unsqueeze(-1)).exp_().mul_(-g).scatter_add_(-1, targets.unsqueeze(-1), g).to(weight.dtype)
    del logits  # the float32 buffer, where the head computes in a narrower dtype
    for i, name in enumerate(names):
        if name == "bias":
            _accumulate(buffers, i, dz.sum(0))
        elif buffers[i] is None:
            buffers[i] = dz.t().mm(rows)
        else:
            for v in range(0, dz.shape[1], _WEIGHT_BLOCK):
                buffers[i][v : v + _WEIGHT_BLOCK].add_(dz[:, v : v + _WEIGHT_BLOCK].t().mm(rows))
    return loss, logp, mean, dz.mm(weight)


def score_logits(logits: torch.Tensor, index: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024):
    """The same from the model's full ``[R, W, V]`` logits (the unchunked path).

    No copy of the scored rows is kept for backward: ``_FullLogitsLogps`` saves the logits the model
    made anyway and builds their gradient ``chunk_size`` rows at a time, so the loss adds one
    gradient-sized tensor to the logits (TRL's log-softmax keeps a second ``[2B, T, V]`` tensor).
    """
    flat = logits.reshape(-1, logits.shape[-1])
    return _FullLogitsLogps.apply(flat, index, targets, chunk_size)


class _FullLogitsLogps(torch.autograd.Function):
    """``log_softmax(logits[index])[target]`` and the mean logit of those rows, in float32 per chunk.

    ``index`` may repeat a row (a shared prompt's last position predicts both answers' first
    token): backward adds the gradients of repeated rows.
    """

    @staticmethod
    def forward(ctx, flat, index, targets, chunk_size):
        logps = flat.new_empty(index.shape[0], dtype=torch.float32)
        means, lses = torch.empty_like(logps), torch.empty_like(logps)
        for start in range(0, index.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            chunk = flat.index_select(0, index[rows]).float()
            lses[rows] = torch.logsumexp(chunk, dim=-1)
            logps[rows] = chunk.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1) - lses[rows]
            means[rows] = chunk.mean(-1)
        ctx.save_for_backward(flat, index, targets, lses)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(means)
        return logps, means

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logps, _grad_means):
        flat, index, targets, lses = ctx.saved_tensors
        grad = torch.zeros_like(flat)
        for start in range(0, index.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            upstream = grad_logps[rows].float().unsqueeze(-1)
            # d(logit_y - logsumexp)/d logits = onehot(y) - softmax
            chunk = (flat.index_select(0, index[rows]).float() - lses[rows].unsqueeze(-1)).exp_().mul_(-upstream)
            chunk.scatter_add_(-1, targets[rows].unsqueeze(-1), upstream)
            grad.index_add_(0, index[rows], chunk.to(grad.dtype))
        return grad, None, None, None
