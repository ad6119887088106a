"""One-shot GPU check of correctness ("On a GPU" in README.md here): 1. the layouts' float32 equivalence
against TRL's padded layout (`equivalence`), 2. the loss alone (`benchmarks.loss`), ``--trainer``: train,
evaluate, save, resume (`trainer_check`). Results: ``<out>/<machine>-gpu-check.{json,md}``
(``-trainer-check`` for ``--trainer`` alone, ``-quick`` added with ``--quick``), rewritten after every
measurement; ``<out>``: ``--out``, else ``$OUT``, else ``benchmarks/results``."""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch

from .. import measure
from ..report import environment as describe
from ..report import machine_slug, scrub, write_result
from ..workload import REPO

T0 = time.perf_counter()  # reset when the check starts: the budget counts from there
RESULTS: dict = {"env": {}, "section1": {}, "section2": {}, "trainer": {}, "errors": []}
ARGS = None  # the parsed options


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def elapsed() -> float:
    return time.perf_counter() - T0


def remaining() -> float:
    return ARGS.budget_s - elapsed()


def out_stem() -> Path:
    """``<out>/<machine>-trainer-check`` or ``-gpu-check`` (``-quick`` added for --quick); ``<out>``: ``--out``,
    else ``$OUT`` (the GPU machine's output folder), else ``benchmarks/results``."""
    kind = "trainer-check" if ARGS.trainer and not ARGS.sections else "gpu-check"
    out = Path(ARGS.out or os.environ.get("OUT") or REPO / "benchmarks" / "results")
    return out / f"{machine_slug(ARGS.device)}-{kind}{'-quick' if ARGS.quick else ''}"


def save() -> None:
    """Write the results so far, machine paths scrubbed (rewritten after every measurement)."""
    try:
        write_result(out_stem(), scrub(RESULTS))
    except Exception:  # never let saving kill the run
        traceback.print_exc()


def record_error(where: str) -> str:
    tb = traceback.format_exc()
    print(f"!!! {where} failed:\n{tb}", flush=True)
    RESULTS["errors"].append({"where": where, "traceback": tb[-4000:]})
    save()
    return tb.strip().splitlines()[-1][:300]


def free() -> None:
    measure.free(collect=True)


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (|a - b| where b is all zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    return diff / scale if scale > 0 else diff


def add_arguments(p) -> None:
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="small sizes (CPU validation of the code paths)")
    p.add_argument("--sections", help="comma-separated subset of 1,2 (default 1,2; none with --trainer)")
    p.add_argument("--trainer", action="store_true", help="the trainer-level check (train, evaluate, save, resume)")
    p.add_argument("--tunes", help="trainer check tunings (default full,lora,qlora on CUDA; full,lora on CPU)")
    p.add_argument("--axolotl", action=argparse.BooleanOptionalAction, default=None,
                   help="trainer check: also the real `axolotl train` with the plugin (default: on CUDA only)")
    p.add_argument("--axolotl-timeout", type=int, default=300)
    p.add_argument("--resume-tol", type=float, default=1e-6, help="resumed losses: largest relative difference")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget; section 1 skips what would not fit")
    p.add_argument("--tol", type=float, default=1e-5, help="section 1 pass bar (float32)")
    p.add_argument("--out", help="output folder (default: $OUT, else benchmarks/results)")
    p.add_argument("--skip-flex", action="store_true", help="leave the flex_attention variants out (debugging)")


def environment() -> None:
    env = RESULTS["env"]
    env.update(describe(ARGS.device), quick=ARGS.quick, argv=ARGS.argv)
    if ARGS.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        env["tf32"] = False
    log(f"environment: {json.dumps(env)}")
    save()


def section2() -> None:
    """The loss alone, each side in this process (GPU peaks per side: ``max_memory_allocated`` reset before each)."""
    from ..loss import SIDES, measure_side
    from ..workload import CHUNK

    res, cuda = RESULTS["section2"], ARGS.device == "cuda"
    size = dict(vocab=32000, tokens=256, pairs=2, hidden=256) if ARGS.quick else dict(vocab=128256, tokens=1024,
                                                                                             pairs=2, hidden=2048)
    # CPU bf16 matmuls are slow, and CPU only checks the math here
    setup = dict(size, chunk_size=CHUNK, device=ARGS.device, dtype="bfloat16" if cuda else "float32", frozen_head=False)
    res["setup"] = dict(setup, memory="max_memory_allocated during loss+backward minus allocated before (CUDA); "
                                      "RSS high-water mark on CPU, not per side in one process")
    res["sides"] = {}
    for side in SIDES:
        log(f"section 2: {side}")
        try:
            res["sides"][side] = measure_side(argparse.Namespace(side=side, **setup))
        except Exception:
            res["sides"][side] = {"error": record_error(f"section2 {side}")}
        free()
        save()
    trl, ours = res["sides"].get("trl", {}), res["sides"].get("ours", {})
    if "loss" in trl and "loss" in ours:
        res["loss_rel_diff"] = abs(ours["loss"] - trl["loss"]) / abs(trl["loss"])
        if cuda:
            res["memory_ratio_trl_over_ours"] = trl["peak_delta_bytes"] / ours["peak_delta_bytes"]


def run_checks() -> None:
    from .equivalence import section1
    from .trainer_check import run_trainer_check

    try:
        environment()
    except Exception:
        record_error("environment")
    checks = [(number, fn) for number, fn in (("1", section1), ("2", section2)) if number in ARGS.sections]
    if ARGS.trainer:
        checks.append(("trainer", run_trainer_check))
    for number, fn in checks:
        log(f"=== {'section ' + number if number != 'trainer' else 'trainer check'} ===")
        try:
            fn()
        except Exception:
            record_error(f"section {number}")
            free()
        save()


def main(args) -> int:
    global ARGS, T0
    args.sections = {s.strip() for s in (args.sections or ("" if args.trainer else "1,2")).split(",") if s.strip()}
    args.tunes = args.tunes or ("full,lora,qlora" if args.device == "cuda" else "full,lora")
    args.axolotl = args.device == "cuda" if args.axolotl is None else args.axolotl
    ARGS = args
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: run with --device cpu", flush=True)
        return 2
    if args.device == "cuda":  # before the first cuBLAS call: what deterministic cuBLAS needs (trainer check)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    T0 = time.perf_counter()
    RESULTS.clear()
    RESULTS.update({"env": {}, "section1": {}, "section2": {}, "trainer": {}, "errors": []})
    # section 1 changes dynamo settings for flex_attention; the trainer check, determinism: restore both
    dynamo = {k: getattr(torch._dynamo.config, k) for k in ("recompile_limit", "automatic_dynamic_shapes")}
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch._dynamo.config.recompile_limit = max(dynamo["recompile_limit"], 64)  # flex: one entry per shape
    try:
        run_checks()
    finally:
        for key, value in dynamo.items():
            setattr(torch._dynamo.config, key, value)
        torch.use_deterministic_algorithms(deterministic)
    text = markdown()
    print("\n" + text, flush=True)
    try:
        out_stem().with_suffix(".md").write_text(text)
    except Exception:
        traceback.print_exc()
    save()
    print(f"written: {out_stem().name}.md and .json", flush=True)
    return 0


def fmt(x, spec=".2e"):
    return "-" if x is None else format(x, spec)


def markdown() -> str:
    env = RESULTS["env"]
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    lines = [f"# gpu_check: {env.get('gpu') or env.get('cpu')}{' (quick)' if ARGS.quick else ''}", "",
             f"- command: `python -m benchmarks gpu-check {' '.join(env.get('argv') or [])}`; date {env.get('date')}; "
             f"git {env.get('git')}",
             f"- versions: {versions}; CUDA {env.get('cuda')}; Python {env.get('python')}", ""]
    lines += section1_lines(RESULTS["section1"], env) + section2_lines(RESULTS["section2"]) + trainer_lines(RESULTS["trainer"])
    if RESULTS["errors"]:
        lines += ["## Errors", ""] + [f"- {e['where']}: {e['traceback'].strip().splitlines()[-1]}" for e in RESULTS["errors"]]
    lines.append(f"\nTotal wall time {elapsed():.0f}s (budget {ARGS.budget_s:.0f}s).")
    return "\n".join(lines) + "\n"


def section1_lines(s1: dict, env: dict) -> list[str]:
    lines = []
    if s1.get("variants"):
        lines += ["## 1. Equivalence vs sdpa padded unchunked (max |diff| / max |ref|)", "",
                  f"bar {ARGS.tol:g} for float32; TF32 {'off' if not env.get('tf32') else 'on'}; "
                  f"reference float32 loss {fmt(s1.get('reference_float32', {}).get('loss'), '.6f')}", "",
                  "| variant | dtype | loss | chosen logps | rejected logps | nll | grads (worst param) | processed/unique | result |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for v in s1["variants"]:
            if "skipped" in v or "error" in v:
                lines.append(f"| {v['name']} | {v.get('dtype', '')} | {v.get('skipped') or 'ERROR: ' + v['error']} |||||||")
                continue
            ratio = f"{v['processed'] / v['unique']:.2f}" if v.get("unique") else "-"
            result = {True: "PASS", False: "FAIL", None: "(no bar)"}[v.get("pass")]
            if v.get("note"):
                result += f" ({v['note']})"
            if v.get("leak"):
                result += " (expected FAIL: shows the check detects a wrong mask)"
            if v.get("retried_static_shapes"):
                result += " (dynamic-shape flex compile failed, static-shape retry)"
            grads = f"{fmt(v.get('grads'))} ({v.get('grads_worst_param')})" if "grads" in v else "not computed"
            lines.append(f"| {v['name']} | {v.get('dtype')} | {fmt(v['loss'])} | {fmt(v['chosen_logps'])} | "
                         f"{fmt(v['rejected_logps'])} | {fmt(v['nll'])} | {grads} | {ratio} | {result} |")
        lines.append(f"\nAll float32 variants as expected: {s1.get('all_float32_pass')}"
                     + (f" (not run: {', '.join(s1['float32_not_run'])})" if s1.get("float32_not_run") else ""))
        lines.append("")
    return lines


def section2_lines(s2: dict) -> list[str]:
    lines = []
    if s2.get("sides"):
        st = s2["setup"]
        lines += [f"## 2. Loss alone: {2 * st['pairs']} rows x {st['tokens']} tokens, hidden {st['hidden']}, "
                  f"vocab {st['vocab']:,}, {st['dtype']}, chunk {st['chunk_size']}", "",
                  "| side | peak above baseline GiB | ms | loss |", "|---|---|---|---|"]
        for name, r in s2["sides"].items():
            if "error" in r:
                lines.append(f"| {name} | ERROR: {r['error']} |||")
                continue
            peak = fmt(r["peak_delta_bytes"] / 2**30, ".3f") if st["device"] == "cuda" else "(CPU: not per side)"
            lines.append(f"| {name} | {peak} | {r['seconds'] * 1e3:.0f} | {r['loss']:.6f} |")
        if "memory_ratio_trl_over_ours" in s2:
            lines.append(f"\nTRL / ours (chunked) peak memory: {s2['memory_ratio_trl_over_ours']:.2f}x")
        if "loss_rel_diff" in s2:
            lines.append(f"loss relative difference, ours chunked vs TRL ({st['dtype']}): {s2['loss_rel_diff']:.2e}")
        lines.append("")
    return lines


def trainer_lines(tr: dict) -> list[str]:
    lines = []
    if tr.get("tunes") is not None:
        lines += ["## Trainer check: train (logging every step), evaluate, save_model, resume from step 2", "",
                  f"Model: {tr['setup']['model']['params'] / 1e6:.1f}M-parameter Llama, vocab "
                  f"{tr['setup']['model']['vocab_size']:,}; bf16; micro-batch 2, gradient accumulation 2, 4 steps, "
                  f"checkpoints at 2 and 4; rows: {tr['setup']['rows']}; resume bar {ARGS.resume_tol:g} relative"
                  + (f"; {tr['deterministic']}" if tr.get("deterministic") else ""), "",
                  "| tuning | result | losses, steps 1-4 | eval_loss | saved = trained | resumed steps 3-4, max rel diff "
                  "| speed plan | s |", "|---|---|---|---|---|---|---|---|"]
        for tune, r in tr["tunes"].items():
            if "skipped" in r or "error" in r:
                lines.append(f"| {tune} | {'skipped: ' + r['skipped'] if 'skipped' in r else 'ERROR: ' + r['error']} "
                             "||||||")
                continue
            losses = ", ".join(f"{v:.4f}" for v in r["losses"].values())
            plan = ", ".join(f"{k}={v}" for k, v in r["speed_plan"].items() if v not in (None, [], ()))
            result = "PASS" if r["passed"] else "FAIL: " + "; ".join(r["problems"])
            lines.append(f"| {tune} | {result} | {losses} | {fmt(r['eval'].get('eval_loss'), '.4f')} | "
                         f"{r['saved_max_abs_diff'] == 0.0} | {fmt(r['resume_max_rel_diff'])} | {plan} | {r['seconds']} |")
        ax = tr.get("axolotl")
        if ax:
            text = ("skipped: " + ax["skipped"] if "skipped" in ax else "ERROR: " + ax["error"] if "error" in ax else
                    ("PASS" if ax["passed"] else "FAIL: " + "; ".join(ax["problems"])) + f", losses {ax.get('losses')}, "
                    f"{ax['seconds']} s")
            lines.append(f"\n`axolotl train` with the plugin (bf16 on CUDA, accumulation 2, logging every step): {text}")
        lines.append(f"\nAll trainer checks passed: {tr.get('all_passed')}")
        lines.append("")
    return lines
