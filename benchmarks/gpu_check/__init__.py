"""Correctness on the card: 1. layout equivalence, 2. the loss alone, ``--trainer`` ("On a GPU" in README.md here);
results written after every measurement."""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch

from ..loss import SIDES, run_job
from ..measure import free
from ..report import environment, fmt, machine_slug, scrub, table, write_result
from ..workload import CHUNK, REPO
from .equivalence import section1, section1_lines
from .trainer_check import run_trainer_check, trainer_lines


class Check:
    """The options, the results so far and the clock the sections share."""

    def __init__(self, args):
        self.args, self.start = args, time.perf_counter()
        self.results = {"env": {}, "section1": {}, "section2": {}, "trainer": {}, "errors": []}
        kind = "trainer-check" if args.trainer and not args.sections else "gpu-check"
        out = Path(args.out or os.environ.get("OUT") or REPO / "benchmarks" / "results")
        self.stem = out / f"{machine_slug(args.device)}-{kind}{'-quick' if args.quick else ''}"

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.args.budget_s - self.elapsed()

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {msg}", flush=True)

    def save(self, text: str | None = None) -> None:
        """Write the results so far (and ``text`` as the Markdown), machine paths scrubbed; never raises."""
        try:
            write_result(self.stem, scrub(self.results), text)
        except Exception:
            traceback.print_exc()

    def error(self, where: str) -> str:
        """Record the exception being handled (saved at once); its last line."""
        tb = traceback.format_exc()
        print(f"!!! {where} failed:\n{tb}", flush=True)
        self.results["errors"].append({"where": where, "traceback": tb[-4000:]})
        self.save()
        return tb.strip().splitlines()[-1][:300]


def add_arguments(p) -> None:
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="small sizes (CPU validation of the code paths)")
    p.add_argument("--sections", help="comma-separated subset of 1,2 (default 1,2; none with --trainer)")
    p.add_argument("--trainer", action="store_true", help="the trainer-level check (train, evaluate, save, resume)")
    p.add_argument("--axolotl", action=argparse.BooleanOptionalAction, default=None,
                   help="trainer check: also the real `axolotl train` with the plugin (default: on CUDA only)")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget; section 1 skips what won't fit")
    p.add_argument("--out", help="output folder (default: $OUT, else benchmarks/results)")


def section2(check: Check) -> None:
    """The loss alone, each side in this process."""
    res, cuda = check.results["section2"], check.args.device == "cuda"
    size = dict(vocab=32000, tokens=256, pairs=2, hidden=256) if check.args.quick else dict(
        vocab=128256, tokens=1024, pairs=2, hidden=2048)
    setup = dict(size, chunk_size=CHUNK, device=check.args.device, dtype="bfloat16" if cuda else "float32",
                 frozen_head=False)
    res["setup"] = dict(setup, memory="max_memory_allocated during loss+backward minus allocated before (CUDA); "
                                      "RSS high-water mark on CPU, not per side in one process")
    res["sides"] = {}
    for side in SIDES:
        check.log(f"section 2: {side}")
        try:
            res["sides"][side] = run_job(dict(setup, side=side))
        except Exception:
            res["sides"][side] = {"error": check.error(f"section2 {side}")}
        free(collect=True)
        check.save()
    trl, ours = res["sides"].get("trl", {}), res["sides"].get("ours", {})
    if "loss" in trl and "loss" in ours:
        res["loss_rel_diff"] = abs(ours["loss"] - trl["loss"]) / abs(trl["loss"])
        if cuda:
            res["memory_ratio_trl_over_ours"] = trl["peak_delta_bytes"] / ours["peak_delta_bytes"]


def section2_lines(s2: dict) -> list[str]:
    if not s2.get("sides"):
        return []
    st, cuda = s2["setup"], s2["setup"]["device"] == "cuda"
    rows = [[name, f"ERROR: {r['error']}", "", ""] if "error" in r else
            [name, fmt(r["peak_delta_bytes"] / 2**30, ".3f") if cuda else "(CPU: not per side)",
             f"{r['seconds'] * 1e3:.0f}", f"{r['loss']:.6f}"] for name, r in s2["sides"].items()]
    lines = [f"## 2. Loss alone: {2 * st['pairs']} rows x {st['tokens']} tokens, hidden {st['hidden']}, "
             f"vocab {st['vocab']:,}, {st['dtype']}, chunk {st['chunk_size']}", ""]
    lines += table(["side", "peak above baseline GiB", "ms", "loss"], rows) + [""]
    if "memory_ratio_trl_over_ours" in s2:
        lines.append(f"TRL / ours (chunked) peak memory: {s2['memory_ratio_trl_over_ours']:.2f}x")
    if "loss_rel_diff" in s2:
        lines.append(f"loss relative difference, ours chunked vs TRL ({st['dtype']}): {s2['loss_rel_diff']:.2e}")
    return lines + [""]


def markdown(check: Check) -> str:
    res, env = check.results, check.results["env"]
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    lines = [f"# gpu_check: {env.get('gpu') or env.get('cpu')}{' (quick)' if check.args.quick else ''}", "",
             f"- command: `python -m benchmarks gpu-check {' '.join(env.get('argv') or [])}`; date "
             f"{env.get('date')}; git {env.get('git')}",
             f"- versions: {versions}; CUDA {env.get('cuda')}; Python {env.get('python')}", ""]
    lines += section1_lines(check) + section2_lines(res["section2"]) + trainer_lines(res["trainer"])
    if res["errors"]:
        lines += ["## Errors", ""] + [f"- {e['where']}: {e['traceback'].strip().splitlines()[-1]}"
                                      for e in res["errors"]]
    lines.append(f"\nTotal wall time {check.elapsed():.0f}s (budget {check.args.budget_s:.0f}s).")
    return "\n".join(lines) + "\n"


def main(args) -> int:
    args.sections = {s.strip() for s in (args.sections or ("" if args.trainer else "1,2")).split(",") if s.strip()}
    args.axolotl = args.device == "cuda" if args.axolotl is None else args.axolotl
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: run with --device cpu", flush=True)
        return 2
    check, env = Check(args), {}
    if args.device == "cuda":  # before the first cuBLAS call: what deterministic cuBLAS needs (trainer check)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        env["tf32"] = False
    check.results["env"].update(environment(args.device), quick=args.quick, argv=args.argv, **env)
    check.log(f"environment: {json.dumps(check.results['env'])}")
    # section 1 changes dynamo settings for flex_attention; the trainer check, determinism: restore both
    dynamo = {k: getattr(torch._dynamo.config, k) for k in ("recompile_limit", "automatic_dynamic_shapes")}
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch._dynamo.config.recompile_limit = max(dynamo["recompile_limit"], 64)  # flex: one entry per shape
    checks = [(f"section {n}", fn) for n, fn in (("1", section1), ("2", section2)) if n in args.sections]
    try:
        for name, fn in checks + ([("trainer check", run_trainer_check)] if args.trainer else []):
            check.log(f"=== {name} ===")
            try:
                fn(check)
            except Exception:
                check.error(name)
                free(collect=True)
            check.save()
    finally:
        for key, value in dynamo.items():
            setattr(torch._dynamo.config, key, value)
        torch.use_deterministic_algorithms(deterministic)
    text = markdown(check)
    print("\n" + text, flush=True)
    check.save(text)
    print(f"written: {check.stem.name}.md and .json", flush=True)
    return 0
