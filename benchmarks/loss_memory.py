"""Peak memory of the ORPO LOSS alone: final hidden states -> LM head -> loss, forward + backward.

    python -m benchmarks.loss_memory [--vocab 128256] [--tokens 1024] [--pairs 2] [--hidden 1024]
                                     [--chunk-size 512] [--device cpu|cuda] [--out DIR]

Input for every side: hidden states ``[2B, T, H]`` (requires grad, standing for the decoder output),
a bias-free ``Linear(H, V)`` head (requires grad unless ``--frozen-head``) and B pairs whose rows are a T/2-token prompt then
a T/2-token answer, chosen rows first. Sides, each in its own process:

* ``trl``: TRL 1.9's way. Full logits ``[2B, T, V]``, the NLL with ``nn.CrossEntropyLoss`` over
  the chosen rows (as its ``concatenated_forward``), TRL's own ``ORPOTrainer.get_batch_logps`` and
  ``ORPOTrainer.odds_ratio_loss``, the ``logits/*`` metric means;
* ``ours``: the scored positions selected as `merlina_orpo_plugin.scoring.score_hidden` does, then
  `merlina_orpo_plugin.scoring.chunked_token_logps` (head applied ``--chunk-size`` tokens at a time,
  recomputed in backward, or with ``--frozen-head`` each chunk's gradient kept from the forward)
  and `merlina_orpo_plugin.losses.odds_ratio_loss`;
* ``ours-full``: the same math from the full logits via `merlina_orpo_plugin.scoring.score_logits`
  (``loss_chunk_size=0``).

Memory: CPU: RSS high-water mark (reset just before) minus RSS before the loss; CUDA:
``torch.cuda.max_memory_allocated`` minus allocated before. Both include the head's weight gradient
(``V x H`` floats, none with ``--frozen-head``), the same for every side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SIDES = ("trl", "ours", "ours-full")


def _inputs(args, device):
    import torch

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
    from types import SimpleNamespace

    import torch
    from trl.experimental.orpo import ORPOTrainer

    B, V = args.pairs, args.vocab
    labels = input_ids.clone()
    labels[:, :half] = -100  # concatenated_labels: prompt masked
    logits = head(hidden)
    # TRL's cross_entropy_loss closure: chosen rows, every real token (no padding here)
    nll = torch.nn.CrossEntropyLoss()(logits[:B, :-1, :].contiguous().view(-1, V), input_ids[:B, 1:].contiguous().view(-1))
    all_logps = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    stub = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device=hidden.device))
    losses, *_ = ORPOTrainer.odds_ratio_loss(stub, all_logps[:B], all_logps[B:])
    _ = logits[:B, :-1, :].detach().mean(), logits[B:, :-1, :].detach().mean()  # logits/chosen, logits/rejected
    return nll - losses.mean()


def ours_token_logps(head, hidden, index, targets, chunk_size):
    """``[N]`` log p(target) of the scored positions ``index`` (flat into ``[R*T]``) of ``hidden``,
    the way `merlina_orpo_plugin.scoring.score_hidden` does it: select the positions, then the head
    ``chunk_size`` rows at a time. Expects ``merlina_orpo_plugin.scoring.chunked_token_logps(head,
    hidden [N, H], targets [N], chunk_size, postprocess=None) -> (logps [N] float32, mean_logits [N])``.
    """
    from merlina_orpo_plugin.scoring import chunked_token_logps

    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    return chunked_token_logps(head, selected, targets, chunk_size)[0]


def ours_full_logps(head, hidden, index, targets):
    """The unchunked path: the model's full ``[R, T, V]`` logits, then
    `merlina_orpo_plugin.scoring.score_logits` (``loss_chunk_size=0``)."""
    from merlina_orpo_plugin.scoring import score_logits

    return score_logits(head(hidden), index, targets)[0]


def _ours_loss(args, hidden, head, input_ids, half, chunk_size):
    import torch
    from merlina_orpo_plugin.losses import odds_ratio_loss

    B = args.pairs
    rows, T, _ = hidden.shape
    # every position but the last predicts the next token: [2B * (T-1)] scored positions
    index = (torch.arange(rows, device=hidden.device)[:, None] * T + torch.arange(T - 1, device=hidden.device)).reshape(-1)
    targets = input_ids[:, 1:].reshape(-1)
    if chunk_size > 0:
        logps = ours_token_logps(head, hidden, index, targets, chunk_size)
    else:
        logps = ours_full_logps(head, hidden, index, targets)
    logps = logps.view(rows, T - 1)
    sequence_logps = logps[:, half - 1 :].mean(-1)  # positions predicting the answer tokens
    nll = -logps[:B].mean()
    losses, *_ = odds_ratio_loss(sequence_logps[:B], sequence_logps[B:], 0.1)
    return nll - losses.mean()


def measure_side(args) -> dict:
    import gc

    import torch

    from .measure import max_rss_kb, reset_peak_rss, rss_kb

    # import now: a first import inside the measured region would count the module's memory
    if args.side == "trl":
        import trl.experimental.orpo  # noqa: F401
    else:
        import merlina_orpo_plugin.losses  # noqa: F401
        import merlina_orpo_plugin.scoring  # noqa: F401
    device = torch.device(args.device)
    hidden, head, input_ids, half = _inputs(args, device)
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_kb() * 1024
        reset = reset_peak_rss()
    start = time.perf_counter()
    if args.side == "trl":
        loss = _trl_loss(args, hidden, head, input_ids, half)
    else:
        loss = _ours_loss(args, hidden, head, input_ids, half, args.chunk_size if args.side == "ours" else 0)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else max_rss_kb() * 1024
    out = {"side": args.side, "loss": loss.item(), "seconds": seconds, "peak_delta_bytes": peak - before,
           "grad_norm_hidden": hidden.grad.norm().item()}
    if not cuda:
        out["peak_reset"] = reset
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loss_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--tokens", type=int, default=1024, help="tokens per sequence")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--frozen-head", action="store_true", help="head weight without gradient (LoRA / QLoRA)")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="write <machine>-loss-memory.json/.md here")
    return p


def measure_all(args) -> dict:
    """Each side in a fresh process; ``{"settings", "sides": {side: result or {"error"}}}``."""
    from .impls import child_env

    sides = {}
    for side in SIDES:
        cmd = [sys.executable, "-m", "benchmarks.loss_memory", "--side", side, "--vocab", str(args.vocab),
               "--tokens", str(args.tokens), "--pairs", str(args.pairs), "--hidden", str(args.hidden),
               "--chunk-size", str(args.chunk_size), "--device", args.device, "--dtype", args.dtype]
        cmd += ["--frozen-head"] * args.frozen_head
        env = child_env(None, args.device)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode == 0 and lines:
            sides[side] = json.loads(lines[-1])
        else:
            sides[side] = {"error": (proc.stderr or proc.stdout)[-1500:].strip().splitlines()[-1:] or ["no output"]}
    settings = {k: getattr(args, k) for k in ("vocab", "tokens", "pairs", "hidden", "chunk_size", "device", "dtype",
                                              "frozen_head")}
    return {"settings": settings, "sides": sides}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"Loss only (hidden states -> loss, forward + backward), vocab {s['vocab']:,}, {2 * s['pairs']} rows x "
             f"{s['tokens']} tokens, hidden {s['hidden']}, {s.get('dtype', 'float32')} on {s['device']}, "
             f"{'frozen' if s.get('frozen_head') else 'trainable'} head; full logits would be "
             f"{2 * s['pairs'] * s['tokens'] * s['vocab'] * (2 if s.get('dtype') == 'bfloat16' else 4) / 2**20:,.0f} MiB.", "",
             "| side | peak memory delta MiB | vs TRL | seconds | loss |", "|---|---|---|---|---|"]
    trl = result["sides"].get("trl", {}).get("peak_delta_bytes")
    names = {"trl": "TRL 1.9 (full logits)", "ours": f"ours, chunked ({s['chunk_size']} tokens)",
             "ours-full": "ours, full logits (loss_chunk_size=0)"}
    for side, r in result["sides"].items():
        if "error" in r:
            lines.append(f"| {names[side]} | not measured: {' '.join(r['error'])} | | | |")
            continue
        ratio = f"{r['peak_delta_bytes'] / trl:.2f}x" if trl else "-"
        lines.append(f"| {names[side]} | {r['peak_delta_bytes'] / 2**20:,.0f} | {ratio} | {r['seconds']:.2f} | {r['loss']:.6f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.side:
        print(json.dumps(measure_side(args)))
        return 0
    from .report import environment, machine_slug, scrub

    result = measure_all(args)
    result.update(command="python -m benchmarks.loss_memory " + " ".join(sys.argv[1:] if argv is None else argv),
                  environment=environment(args.device))
    result = scrub(result)
    text = f"`{result['command']}`\n\n" + markdown(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"{machine_slug(args.device)}-loss-memory{'-frozen-head' if args.frozen_head else ''}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
        stem.with_suffix(".md").write_text(text)
    return 0 if all("error" not in r for r in result["sides"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
