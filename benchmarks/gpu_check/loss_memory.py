"""Section 3: loss-only memory, TRL's full-logits loss vs ``scoring.chunked_token_logps`` (TRL's math inlined
where TRL is not importable).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from . import common as C
from .common import BETA, RESULTS, free, log, record_error, save, sync


def section3() -> None:
    from merlina_orpo_plugin.losses import odds_ratio_loss
    from merlina_orpo_plugin.scoring import chunked_token_logps

    res = RESULTS["section3"]
    cuda = C.ARGS.device == "cuda"
    B, T, H, V, chunk = (2, 256, 256, 32000, 512) if C.ARGS.quick else (2, 1024, 2048, 128256, 512)
    dtype = torch.bfloat16 if cuda else torch.float32  # CPU bf16 matmuls are very slow; CPU only checks the math
    half = T // 2
    try:
        from trl.experimental.orpo import ORPOTrainer

        get_batch_logps, trl_odds = ORPOTrainer.get_batch_logps, ORPOTrainer.odds_ratio_loss
        source = "trl.experimental.orpo.ORPOTrainer"
    except Exception as error:
        log(f"section 3: TRL not importable ({error!r}); using an inline copy of TRL 1.9's math")
        source = "inline copy of TRL 1.9"
        get_batch_logps, trl_odds = _inline_get_batch_logps, _inline_odds_ratio_loss
    res["setup"] = dict(rows=2 * B, tokens=T, hidden=H, vocab=V, chunk_size=chunk, dtype=str(dtype)[6:], trl_source=source,
                        rows_layout="prompt T/2 tokens (shared by the pair) + answer T/2 tokens, chosen rows first",
                        memory="max_memory_allocated during loss+backward minus memory_allocated before "
                               "(includes the head's weight gradient, the same for both)")
    torch.manual_seed(0)
    device = C.ARGS.device
    hidden = torch.randn(2 * B, T, H, device=device, dtype=dtype, requires_grad=True)
    head = torch.nn.Linear(H, V, bias=False, device=device, dtype=dtype)
    input_ids = torch.randint(3, V, (2 * B, T), device=device)
    input_ids[B:, :half] = input_ids[:B, :half]

    def trl_side():
        labels = input_ids.clone()
        labels[:, :half] = -100
        logits = head(hidden)
        nll = torch.nn.CrossEntropyLoss()(logits[:B, :-1, :].contiguous().view(-1, V), input_ids[:B, 1:].contiguous().view(-1))
        logps = get_batch_logps(logits, labels, average_log_prob=True)
        stub = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device=hidden.device))
        losses = trl_odds(stub, logps[:B], logps[B:])[0]
        _ = logits[:B, :-1, :].detach().mean(), logits[B:, :-1, :].detach().mean()  # TRL's logits/* metrics
        return nll - losses.mean()

    # the scored positions our collator lists: every position of the chosen rows (NLL + chosen logps),
    # the answer positions of the rejected rows
    pos = torch.arange(T - 1, device=device)
    chosen_idx = (torch.arange(B, device=device)[:, None] * T + pos[None, :]).reshape(-1)
    rejected_idx = ((torch.arange(B, 2 * B, device=device)[:, None]) * T + pos[None, half - 1:]).reshape(-1)
    index = torch.cat([chosen_idx, rejected_idx])
    targets = input_ids.reshape(-1)[index + 1]

    def ours_side():
        selected = hidden.reshape(-1, H).index_select(0, index)
        logps = chunked_token_logps(head, selected, targets, chunk)[0]
        chosen_all = logps[: B * (T - 1)].view(B, T - 1)
        rejected = logps[B * (T - 1):].view(B, T - half)
        nll = -chosen_all.mean()
        losses = odds_ratio_loss(chosen_all[:, half - 1:].mean(-1), rejected.mean(-1), BETA)[0]
        return nll - losses.mean()

    for name, fn in (("trl_full_logits", trl_side), (f"ours_chunked_{chunk}", ours_side)):
        try:
            for attempt in ("warm-up", "measured"):  # warm-up: cuBLAS workspaces etc. are allocated once
                hidden.grad = None
                head.weight.grad = None
                free()
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                t = time.perf_counter()
                loss = fn()
                loss.backward()
                sync()
                seconds = time.perf_counter() - t
                peak = torch.cuda.max_memory_allocated() - before if cuda else None
                value = loss.item()
                del loss
            res[name] = dict(loss=value, seconds=seconds, peak_delta_bytes=peak,
                             peak_delta_gib=None if peak is None else peak / 2**30,
                             grad_hidden_norm=hidden.grad.float().norm().item(),
                             grad_head_norm=head.weight.grad.float().norm().item())
            mem = "n/a on CPU" if peak is None else f"{peak / 2**30:.3f} GiB"
            log(f"section 3: {name}: peak above baseline {mem}, loss {value:.6f}, {seconds * 1e3:.0f} ms")
        except Exception:
            res[name] = dict(error=record_error(f"section3 {name}"))
            free()
        save()
    trl_r, ours_r = res.get("trl_full_logits", {}), res.get(f"ours_chunked_{chunk}", {})
    if trl_r.get("peak_delta_bytes") and ours_r.get("peak_delta_bytes"):
        res["memory_ratio_trl_over_ours"] = trl_r["peak_delta_bytes"] / ours_r["peak_delta_bytes"]
    if "loss" in trl_r and "loss" in ours_r:
        res["loss_rel_diff"] = abs(trl_r["loss"] - ours_r["loss"]) / abs(trl_r["loss"])
    hidden.grad = head.weight.grad = None
    del hidden, head
    free()
    save()


def _inline_get_batch_logps(logits, labels, average_log_prob=False, is_encoder_decoder=False):
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    mask = labels != -100
    labels = torch.where(labels == -100, 0, labels)
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
        per_token = picked - torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    else:  # TRL's selective_log_softmax: row by row for half precision
        per_token = torch.stack([torch.gather(torch.log_softmax(r, -1), -1, l.unsqueeze(-1)).squeeze(-1)
                                 for r, l in zip(logits, labels)])
    return (per_token * mask).sum(-1) / mask.sum(-1) if average_log_prob else (per_token * mask).sum(-1)


def _inline_odds_ratio_loss(self, chosen, rejected):
    from merlina_orpo_plugin.losses import log1mexp

    c, r = chosen.float(), rejected.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    ratio = torch.nn.functional.logsigmoid(log_odds)
    return self.beta * ratio, self.beta * c.detach(), self.beta * r.detach(), ratio.mean(), log_odds.mean()
