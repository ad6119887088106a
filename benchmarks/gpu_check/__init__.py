"""Correctness on the card: 1. layout equivalence, 2. the loss alone, ``--trainer`` ("On a GPU" in README.md here);
results written after every measurement."""

from __future__ import annotations

import json
import os
import time
import traceback
from functools import partial
from pathlib import Path

import torch

from ..loss import SIDES, memory_markdown, run_job
from ..measure import free
from ..report import environment, fmt, machine_slug, scrub, write_result
from ..workload import CHUNK, REPO
from .equivalence import section1, section1_lines
from .trainer_check import run_trainer_check, trainer_lines

MEMORY = "max_memory_allocated during loss+backward minus allocated before (CUDA); RSS high-water mark on CPU, " \
         "not per side in one process"


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
    p.add_argument("--sections", help="comma-separated subset of 1,2 (default 1,2; none with --trainer)")
    p.add_argument("--trainer", action="store_true",
                   help="the trainer-level check (train, evaluate, save, resume; on CUDA also `axolotl train`)")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget; section 1 skips what won't fit")
    p.add_argument("--out", help="output folder (default: $OUT, else benchmarks/results)")


def section2(check: Check) -> None:
    """The sides of ``loss-memory``, each run in this process (there: each in a fresh one)."""
    res, args, cuda = check.results["section2"], check.args, check.args.device == "cuda"
    vocab, tokens, hidden = (32000, 256, 256) if args.quick else (128256, 1024, 2048)
    settings = dict(vocab=vocab, tokens=tokens, pairs=2, hidden=hidden, chunk_size=CHUNK, device=args.device,
                    dtype="bfloat16" if cuda else "float32", frozen_head=False)
    res.update(setup=dict(settings, memory=MEMORY), sides={})
    for side in SIDES:
        check.log(f"section 2: {side}")
        try:
            res["sides"][side] = run_job(dict(settings, side=side))
        except Exception:  # as `impls.spawn` reports a side that failed
            res["sides"][side] = {"error": "exception", "log_tail": check.error(f"section2 {side}")}
        free(collect=True)
        check.save()
    trl, ours = res["sides"]["trl"], res["sides"]["ours"]
    if "loss" in trl and "loss" in ours:
        res["loss_rel_diff"] = abs(ours["loss"] - trl["loss"]) / abs(trl["loss"])
        if cuda:
            res["memory_ratio_trl_over_ours"] = trl["peak_delta_bytes"] / ours["peak_delta_bytes"]


def section2_lines(s2: dict) -> list[str]:
    """``loss-memory``'s table of the sides, then how far our loss is from TRL's."""
    if not s2.get("sides"):
        return []
    settings = {k: v for k, v in s2["setup"].items() if k != "memory"}
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if k != "frozen_head")
    sides = memory_markdown({"command": f"python -m benchmarks loss-memory {flags}", "settings": settings,
                             "sides": s2["sides"]})
    return ["## 2. The loss alone: the sides of `loss-memory`, in one process", "", sides,
            f"Memory: {MEMORY}. Loss relative difference, ours chunked vs TRL: {fmt(s2.get('loss_rel_diff'), '.2e')}",
            ""]


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
    parts = [(f"section {n}", fn) for n, fn in (("1", section1), ("2", section2)) if n in args.sections]
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
