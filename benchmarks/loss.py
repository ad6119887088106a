"""The ORPO loss alone, ours against TRL 1.9's: ``loss-memory``, and the paths `gpu_check` compares."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

from merlina_orpo_plugin.batch.collator import ORPODataCollator
from merlina_orpo_plugin.batch.packing import BatchLayout
from merlina_orpo_plugin.compute.forward import ORPOForwardOutput
from merlina_orpo_plugin.compute.kernels import chunked_token_logps, fused_chunk_loss, score_logits
from merlina_orpo_plugin.compute.losses import odds_ratio_loss
from merlina_orpo_plugin.compute.objective import LossSpec, orpo_objective
from merlina_orpo_plugin.model.adapter import find_model_facts

from .impls import spawn
from .measure import PeakDelta
from .report import publish, table
from .workload import BETA, CHUNK, PAD

SIDES = ("trl", "ours", "ours-fused", "ours-full")


def collate(features, shared: bool, packed: bool) -> dict:
    return ORPODataCollator(pad_token_id=PAD, layout=BatchLayout(shared, packed))(features)


def trl_features(features) -> dict:
    """TRL's ORPO batch (as its DPO collator pads it): ``{chosen,rejected}_{input_ids,attention_mask,labels}``."""
    batch = {}
    for side in ("chosen", "rejected"):
        ids = [f["prompt_input_ids"] + f[f"{side}_input_ids"] for f in features]
        labels = [[-100] * len(f["prompt_input_ids"]) + f[f"{side}_input_ids"] for f in features]
        width = max(map(len, ids))
        batch[f"{side}_input_ids"] = torch.tensor([x + [PAD] * (width - len(x)) for x in ids])
        batch[f"{side}_attention_mask"] = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        batch[f"{side}_labels"] = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
    return batch


def trl_trainer(device):
    """An ``ORPOTrainer`` without ``__init__``: just the attributes its loss path reads."""
    from trl.experimental.orpo import ORPOTrainer

    trainer = object.__new__(ORPOTrainer)
    trainer.is_encoder_decoder, trainer.padding_value, trainer.label_pad_token_id = False, PAD, -100
    trainer.aux_loss_enabled, trainer.aux_loss_coef, trainer.beta = False, 0.0, BETA
    trainer.accelerator = SimpleNamespace(device=torch.device(device), gather_for_metrics=lambda x: x)
    return trainer


def ours_loss(model, batch, chunk):
    """(loss, chosen logps, rejected logps, nll) of `orpo_objective`'s plain mode."""
    facts = find_model_facts(model, chunked=chunk > 0)
    step = orpo_objective(model, batch, LossSpec(BETA, loss_chunk_size=chunk), facts=facts)
    out = ORPOForwardOutput.of(step.scores)
    return step.loss, out.chosen_logps, out.rejected_logps, out.nll_loss


def trl_loss(trainer, model, batch):
    """TRL's ``get_batch_loss_metrics`` (metrics' ``.item()`` syncs included); its forward outputs captured."""
    captured, original = [], type(trainer).concatenated_forward

    def capture(model_, batch_):
        captured.append(original(trainer, model_, batch_))
        return captured[-1]

    with mock.patch.object(trainer, "concatenated_forward", capture):
        loss, _metrics = trainer.get_batch_loss_metrics(model, batch)
    chosen, rejected, _, _, nll = captured[-1][:5]
    return loss, chosen, rejected, nll


def add_arguments(p) -> None:
    for flag, default in (("--vocab", 128256), ("--tokens", 1024), ("--pairs", 2), ("--hidden", 1024),
                          ("--chunk-size", CHUNK)):
        p.add_argument(flag, type=int, default=default, help="default %(default)s")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--frozen-head", action="store_true", help="head weight without gradient (LoRA / QLoRA)")
    p.add_argument("--out", type=Path, help="write <machine>-loss-memory[-frozen-head].{json,md} here")


def _trl_side(s, hidden, head, input_ids, half):
    """TRL's `ORPOTrainer` loss path on full logits (its NLL, logps, odds ratio and ``logits/*`` means)."""
    B, V, trainer = s.pairs, s.vocab, trl_trainer(hidden.device)
    labels = input_ids.clone()
    labels[:, :half] = -100
    logits = head(hidden)
    nll = torch.nn.CrossEntropyLoss()(logits[:B, :-1, :].contiguous().view(-1, V),
                                      input_ids[:B, 1:].contiguous().view(-1))
    all_logps = trainer.get_batch_logps(logits, labels, average_log_prob=True)
    losses, *_ = trainer.odds_ratio_loss(all_logps[:B], all_logps[B:])
    _ = logits[:B, :-1, :].detach().mean(), logits[B:, :-1, :].detach().mean()
    return nll - losses.mean()


def _ours_side(s, hidden, head, input_ids, half):
    """Our loss: chunked as `score_hidden` runs it, fused over whole pairs, or from the full logits (``ours-full``)."""
    B, (rows, T, H), fused = s.pairs, hidden.shape, s.side == "ours-fused"
    order = torch.arange(rows, device=hidden.device)
    order = order.view(2, B).t().reshape(-1) if fused else order  # fused: each pair's rows side by side
    index = (order[:, None] * T + torch.arange(T - 1, device=hidden.device)).reshape(-1)
    targets = input_ids[order, 1:].reshape(-1)
    if fused:
        def chunk_loss(logps, start, end):  # one pair: -its share of the chosen token mean - its OR term / B
            chosen, rejected = logps.view(2, T - 1)
            or_loss = odds_ratio_loss(chosen[half - 1 :].mean()[None], rejected[half - 1 :].mean()[None], BETA)[0]
            return -chosen.sum() / (B * (T - 1)) - or_loss.sum() / B

        pairs = [(2 * (T - 1) * i, 2 * (T - 1) * (i + 1)) for i in range(B)]
        return fused_chunk_loss(head, hidden.reshape(-1, H).index_select(0, index), targets, pairs, chunk_loss)[0]
    if s.side == "ours-full":
        logps = score_logits(head(hidden), index, targets)[0]
    else:
        logps = chunked_token_logps(head, hidden.reshape(-1, H).index_select(0, index), targets, s.chunk_size)[0]
    logps = logps.view(rows, T - 1)
    sequence_logps = logps[:, half - 1 :].mean(-1)
    losses, *_ = odds_ratio_loss(sequence_logps[:B], sequence_logps[B:], BETA)
    return -logps[:B].mean() - losses.mean()


def run_job(job: dict) -> dict:
    """One side's loss + backward on seeded inputs, its peak memory growth and time."""
    s = SimpleNamespace(**job)
    if s.side == "trl":  # imported before the measured region
        import trl.experimental.orpo  # noqa: F401
    torch.manual_seed(0)
    device, dtype, rows, half = torch.device(s.device), getattr(torch, s.dtype), 2 * s.pairs, s.tokens // 2
    hidden = torch.randn(rows, s.tokens, s.hidden, device=device, dtype=dtype, requires_grad=True)
    head = torch.nn.Linear(s.hidden, s.vocab, bias=False, device=device, dtype=dtype).requires_grad_(not s.frozen_head)
    input_ids = torch.randint(3, min(s.vocab, 49152), (rows, s.tokens), device=device)  # SmolLM2-range ids
    input_ids[s.pairs:, :half] = input_ids[: s.pairs, :half]  # shared prompts
    gc.collect()
    with PeakDelta() as m:
        loss = (_trl_side if s.side == "trl" else _ours_side)(s, hidden, head, input_ids, half)
        loss.backward()
    out = {"side": s.side, "loss": loss.item(), "seconds": m.seconds, "peak_delta_bytes": m.bytes,
           "grad_norm_hidden": hidden.grad.norm().item()}
    return out if s.device == "cuda" else {**out, "peak_reset": m.reset}


def memory_markdown(result: dict) -> str:
    s, sides = result["settings"], result["sides"]
    logits_mib = 2 * s["pairs"] * s["tokens"] * s["vocab"] * (2 if s.get("dtype") == "bfloat16" else 4) / 2**20
    trl = sides.get("trl", {}).get("peak_delta_bytes")
    names = {"trl": "TRL 1.9 (full logits)", "ours": f"ours, chunked ({s['chunk_size']} tokens)",
             "ours-fused": "ours, fused: chunks of whole pairs, gradients in the forward",
             "ours-full": "ours, full logits (loss_chunk_size=0)"}
    rows = [[names[side], f"not measured: {r['error']} {r['log_tail'].strip().splitlines()[-1:]}", "", "", ""]
            if "error" in r else
            [names[side], f"{r['peak_delta_bytes'] / 2**20:,.0f}", f"{r['peak_delta_bytes'] / trl:.2f}x" if trl
             else "-", f"{r['seconds']:.2f}", f"{r['loss']:.6f}"] for side, r in sides.items()]
    setup = (f"Loss only (hidden states -> loss, forward + backward), vocab {s['vocab']:,}, {2 * s['pairs']} rows x "
             f"{s['tokens']} tokens, hidden {s['hidden']}, {s.get('dtype', 'float32')} on {s['device']}, "
             f"{'frozen' if s.get('frozen_head') else 'trainable'} head; full logits would be {logits_mib:,.0f} MiB.")
    columns = ["side", "peak memory delta MiB", "vs TRL", "seconds", "loss"]
    return "\n".join([f"`{result['command']}`", "", setup, ""] + table(columns, rows)) + "\n"


def main(args) -> int:
    """Peak memory of the ORPO loss alone, TRL's full logits against ours, each side in a fresh process."""
    names = ("vocab", "tokens", "pairs", "hidden", "chunk_size", "device", "dtype", "frozen_head")
    settings, sides = {k: getattr(args, k) for k in names}, {}
    with tempfile.TemporaryDirectory(prefix="loss-memory-") as tmp:
        for side in [n for n in SIDES if n != "ours-fused" or not args.frozen_head]:  # fused: trained head only
            sides[side] = spawn(dict(settings, subcommand="loss-memory", side=side, work_dir=f"{tmp}/{side}",
                                     result_path=f"{tmp}/{side}/result.json"), timeout=3600)
    result = publish(args, "loss-memory", {"settings": settings, "sides": sides}, args.device, memory_markdown,
                     suffix="loss-memory" + "-frozen-head" * args.frozen_head)
    return 0 if all("error" not in r for r in result["sides"].values()) else 1
