"""Correctness on the card: 1. layout equivalence, ``--trainer`` ("On a GPU" in README.md here); results written
after every measurement. The loss alone on the card is ``loss-memory --device cuda``."""

from __future__ import annotations

import json
import os
import time
import traceback
from functools import partial
from pathlib import Path

import torch

from ..measure import free
from ..report import environment, machine_slug, scrub, write_result
from ..workload import REPO
from .equivalence import section1, section1_lines
from .trainer_check import run_trainer_check, trainer_lines


class Check:
    """The options, the results so far and the clock the sections share."""

    def __init__(self, args):
        self.args, self.start = args, time.perf_counter()
        self.results = {"env": {}, "section1": {}, "trainer": {}, "errors": []}
        kind = "trainer-check" if args.trainer and not args.equivalence else "gpu-check"
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

    def attempt(self, where: str, fn, **failed) -> dict:
        """``fn()``; if it raises, the error recorded, memory freed and ``{"error": its last line, **failed}``."""
        try:
            return fn()
        except Exception:
            error = self.error(where)
            free(collect=True)
            return {"error": error, **failed}


def add_arguments(p) -> None:
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="small sizes (CPU validation of the code paths)")
    p.add_argument("--equivalence", action="store_true", help="section 1 (the default without --trainer)")
    p.add_argument("--trainer", action="store_true",
                   help="the trainer-level check (train, evaluate, save, resume)")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget; section 1 skips what won't fit")
    p.add_argument("--out", help="output folder (default: $OUT, else benchmarks/results)")


def markdown(check: Check) -> str:
    res, env = check.results, check.results["env"]
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    lines = [f"# gpu_check: {env.get('gpu') or env.get('cpu')}{' (quick)' if check.args.quick else ''}", "",
             f"- command: `python -m benchmarks gpu-check {' '.join(env.get('argv') or [])}`; date "
             f"{env.get('date')}; git {env.get('git')}",
             f"- versions: {versions}; CUDA {env.get('cuda')}; Python {env.get('python')}", ""]
    lines += section1_lines(check) + trainer_lines(res["trainer"])
    if res["errors"]:
        lines += ["## Errors", ""] + [f"- {e['where']}: {e['traceback'].strip().splitlines()[-1]}"
                                      for e in res["errors"]]
    lines.append(f"\nTotal wall time {check.elapsed():.0f}s (budget {check.args.budget_s:.0f}s).")
    return "\n".join(lines) + "\n"


def main(args) -> int:
    args.equivalence = args.equivalence or not args.trainer
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: run with --device cpu", flush=True)
        return 2
    if args.device == "cuda":  # before the first cuBLAS call: what deterministic cuBLAS needs (trainer check)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    check = Check(args)
    check.results["env"].update(environment(args.device), quick=args.quick, argv=args.argv,
                                tf32=torch.backends.cuda.matmul.allow_tf32)
    check.log(f"environment: {json.dumps(check.results['env'])}")
    parts = [("section 1", section1)] if args.equivalence else []
    parts += [("trainer check", run_trainer_check)] if args.trainer else []
    deterministic, dynamo = torch.are_deterministic_algorithms_enabled(), torch._dynamo.config
    try:  # section 1 changes dynamo's settings for flex_attention, the trainer check determinism: both restored
        with dynamo.patch(recompile_limit=max(dynamo.recompile_limit, 64),  # flex: one entry per shape
                          automatic_dynamic_shapes=dynamo.automatic_dynamic_shapes):
            for name, fn in parts:
                check.log(f"=== {name} ===")
                check.attempt(name, partial(fn, check))
                check.save()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    text = markdown(check)
    print("\n" + text, flush=True)
    check.save(text)
    print(f"written: {check.stem.name}.md and .json", flush=True)
    return 0
