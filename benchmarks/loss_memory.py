"""Peak memory of the ORPO loss alone (hidden states -> LM head -> loss, forward + backward): TRL 1.9's
full logits against ours, chunked and unchunked, each side in a fresh process (the sides and how memory
is counted: "The loss alone" in README.md here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from .workload import BETA, CHUNK

SIDES = ("trl", "ours", "ours-fused", "ours-full")
SIZE = ("vocab", "tokens", "pairs", "hidden", "chunk_size", "device", "dtype")


def add_arguments(p) -> None:
    import argparse

    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--tokens", type=int, default=1024, help="tokens per sequence")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--chunk-size", type=int, default=CHUNK, help=f"default {CHUNK}, the package's loss_chunk_size")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--frozen-head", action="store_true", help="head weight without gradient (LoRA / QLoRA)")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="write <machine>-loss-memory[-frozen-head].{json,md} here")


def _inputs(args, device):
    torch.manual_seed(0)
    rows, half = 2 * args.pairs, args.tokens // 2
    dtype = getattr(torch, args.dtype)
    hidden = torch.randn(rows, args.tokens, args.hidden, device=device, dtype=dtype, requires_grad=True)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False, device=device, dtype=dtype)
    head.requires_grad_(not args.frozen_head)
    input_ids = torch.randint(3, min(args.vocab, 49152), (rows, args.tokens), device=device)  # SmolLM2-range ids
    input_ids[args.pairs:, :half] = input_ids[: args.pairs, :half]  # shared prompts
    return hidden, head, input_ids, half


def _trl_loss(args, hidden, head, input_ids, half):
    from trl.experimental.orpo import ORPOTrainer

    from .loss_paths import trl_trainer

    B, V = args.pairs, args.vocab
    labels = input_ids.clone()
    labels[:, :half] = -100  # concatenated_labels: prompt masked
    logits = head(hidden)
    # TRL's cross_entropy_loss closure: chosen rows, every real token (no padding here)
    nll = torch.nn.CrossEntropyLoss()(logits[:B, :-1, :].contiguous().view(-1, V), input_ids[:B, 1:].contiguous().view(-1))
    all_logps = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    losses, *_ = trl_trainer(hidden.device).odds_ratio_loss(all_logps[:B], all_logps[B:])
    _ = logits[:B, :-1, :].detach().mean(), logits[B:, :-1, :].detach().mean()  # logits/chosen, logits/rejected
    return nll - losses.mean()


def _ours_loss(args, hidden, head, input_ids, half, chunk_size):
    from merlina_orpo_plugin.compute.losses import odds_ratio_loss
    from merlina_orpo_plugin.compute.kernels import chunked_token_logps, score_logits

    B = args.pairs
    rows, T, _ = hidden.shape
    # every position but the last predicts the next token: [2B * (T-1)] scored positions
    index = (torch.arange(rows, device=hidden.device)[:, None] * T + torch.arange(T - 1, device=hidden.device)).reshape(-1)
    targets = input_ids[:, 1:].reshape(-1)
    if chunk_size > 0:  # as `score_hidden`: select the scored positions, then the head chunk by chunk
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
        logps = chunked_token_logps(head, selected, targets, chunk_size)[0]
    else:  # loss_chunk_size=0: the full [R, T, V] logits
        logps = score_logits(head(hidden), index, targets)[0]
    logps = logps.view(rows, T - 1)
    sequence_logps = logps[:, half - 1 :].mean(-1)  # positions predicting the answer tokens
    losses, *_ = odds_ratio_loss(sequence_logps[:B], sequence_logps[B:], BETA)
    return -logps[:B].mean() - losses.mean()


def _fused_loss(args, hidden, head, input_ids, half):
    """The same loss as `_ours_loss`, summed over chunks of whole pairs by `compute.kernels.fused_chunk_loss`
    (what the trainer runs for a trained head): each pair's chosen and rejected rows are one chunk."""
    from merlina_orpo_plugin.compute.kernels import fused_chunk_loss
    from merlina_orpo_plugin.compute.losses import odds_ratio_loss

    B = args.pairs
    rows, T, _ = hidden.shape
    order = torch.arange(rows, device=hidden.device).view(2, B).t().reshape(-1)  # chosen 0, rejected 0, chosen 1, ...
    index = (order[:, None] * T + torch.arange(T - 1, device=hidden.device)).reshape(-1)
    targets = input_ids[order, 1:].reshape(-1)
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    pair_tokens = 2 * (T - 1)

    def chunk_loss(logps, start, end):  # one pair: -its share of the chosen rows' token mean - its OR term / B
        chosen, rejected = logps.view(2, T - 1)
        or_losses = odds_ratio_loss(chosen[half - 1 :].mean()[None], rejected[half - 1 :].mean()[None], BETA)[0]
        return -chosen.sum() / (B * (T - 1)) - or_losses.sum() / B

    bounds = [(start, start + pair_tokens) for start in range(0, B * pair_tokens, pair_tokens)]
    return fused_chunk_loss(head, selected, targets, bounds, chunk_loss)[0]


def measure_side(args) -> dict:
    import gc

    from .measure import PeakDelta

    # import now: a first import inside the measured region would count the module's memory
    if args.side == "trl":
        import trl.experimental.orpo  # noqa: F401

        from . import loss_paths  # noqa: F401
    else:
        import merlina_orpo_plugin.compute.kernels  # noqa: F401
        import merlina_orpo_plugin.compute.losses  # noqa: F401
    hidden, head, input_ids, half = _inputs(args, torch.device(args.device))
    gc.collect()
    with PeakDelta() as m:
        if args.side == "trl":
            loss = _trl_loss(args, hidden, head, input_ids, half)
        elif args.side == "ours-fused":
            loss = _fused_loss(args, hidden, head, input_ids, half)
        else:
            loss = _ours_loss(args, hidden, head, input_ids, half, args.chunk_size if args.side == "ours" else 0)
        loss.backward()
    out = {"side": args.side, "loss": loss.item(), "seconds": m.seconds, "peak_delta_bytes": m.bytes,
           "grad_norm_hidden": hidden.grad.norm().item()}
    return out if args.device == "cuda" else {**out, "peak_reset": m.reset}


def measure_all(args) -> dict:
    """Each side in a fresh process; ``{"settings", "sides": {side: result or {"error"}}}``."""
    from .impls import child_env

    sides = {}
    for side in SIDES:
        if side == "ours-fused" and args.frozen_head:  # the trainer fuses the loss only for a trained head
            continue
        cmd = [sys.executable, "-m", "benchmarks", "loss-memory", "--side", side]
        cmd += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in SIZE] + ["--frozen-head"] * args.frozen_head
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(None, args.device))
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode == 0 and lines:
            sides[side] = json.loads(lines[-1])
        else:
            sides[side] = {"error": (proc.stderr or proc.stdout)[-1500:].strip().splitlines()[-1:] or ["no output"]}
    return {"settings": {k: getattr(args, k) for k in (*SIZE, "frozen_head")}, "sides": sides}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"Loss only (hidden states -> loss, forward + backward), vocab {s['vocab']:,}, {2 * s['pairs']} rows x "
             f"{s['tokens']} tokens, hidden {s['hidden']}, {s.get('dtype', 'float32')} on {s['device']}, "
             f"{'frozen' if s.get('frozen_head') else 'trainable'} head; full logits would be "
             f"{2 * s['pairs'] * s['tokens'] * s['vocab'] * (2 if s.get('dtype') == 'bfloat16' else 4) / 2**20:,.0f} MiB.", "",
             "| side | peak memory delta MiB | vs TRL | seconds | loss |", "|---|---|---|---|---|"]
    trl = result["sides"].get("trl", {}).get("peak_delta_bytes")
    names = {"trl": "TRL 1.9 (full logits)", "ours": f"ours, chunked ({s['chunk_size']} tokens)",
             "ours-fused": "ours, fused: chunks of whole pairs, gradients in the forward",
             "ours-full": "ours, full logits (loss_chunk_size=0)"}
    for side, r in result["sides"].items():
        if "error" in r:
            lines.append(f"| {names[side]} | not measured: {' '.join(r['error'])} | | | |")
            continue
        ratio = f"{r['peak_delta_bytes'] / trl:.2f}x" if trl else "-"
        lines.append(f"| {names[side]} | {r['peak_delta_bytes'] / 2**20:,.0f} | {ratio} | {r['seconds']:.2f} | {r['loss']:.6f} |")
    return "\n".join(lines) + "\n"


def main(args) -> int:
    if args.side:
        print(json.dumps(measure_side(args)))
        return 0
    from .report import command, environment, machine_slug, scrub, write_result

    result = measure_all(args)
    result = scrub(dict(result, command=command("loss-memory", args.argv), environment=environment(args.device)))
    text = f"`{result['command']}`\n\n" + markdown(result)
    print(text)
    if args.out:
        write_result(args.out / f"{machine_slug(args.device)}-loss-memory{'-frozen-head' * args.frozen_head}", result, text)
    return 0 if all("error" not in r for r in result["sides"].values()) else 1
