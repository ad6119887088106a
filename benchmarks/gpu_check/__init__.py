"""One-shot GPU check of correctness ("On a GPU" in README.md here): 1. the layouts' float32 equivalence
against TRL's padded layout (`equivalence`), 2. the loss alone (`loss_memory`), ``--trainer``: train,
evaluate, save, resume (`trainer_check`). Results: ``<out>/<machine>-gpu-check.{json,md}``
(``-trainer-check`` for ``--trainer`` alone, ``-quick`` added with ``--quick``), rewritten after every
measurement; ``<out>``: ``--out``, else ``$OUT``, else ``benchmarks/results``."""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

import torch

from . import common as C
from .common import RESULTS, free, log, out_stem, record_error, save


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
    from ..report import environment as describe

    env = RESULTS["env"]
    env.update(describe(C.ARGS.device), quick=C.ARGS.quick, argv=C.ARGS.argv)
    if C.ARGS.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        env["tf32"] = False
    log(f"environment: {json.dumps(env)}")
    save()


def section2() -> None:
    """The loss alone, each side in this process (GPU peaks per side: ``max_memory_allocated`` reset before each)."""
    from ..loss_memory import SIDES, measure_side
    from ..workload import CHUNK

    res, cuda = RESULTS["section2"], C.ARGS.device == "cuda"
    size = dict(vocab=32000, tokens=256, pairs=2, hidden=256) if C.ARGS.quick else dict(vocab=128256, tokens=1024,
                                                                                             pairs=2, hidden=2048)
    # CPU bf16 matmuls are slow, and CPU only checks the math here
    setup = dict(size, chunk_size=CHUNK, device=C.ARGS.device, dtype="bfloat16" if cuda else "float32", frozen_head=False)
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
    checks = [(number, fn) for number, fn in (("1", section1), ("2", section2)) if number in C.ARGS.sections]
    if C.ARGS.trainer:
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
    args.sections = {s.strip() for s in (args.sections or ("" if args.trainer else "1,2")).split(",") if s.strip()}
    args.tunes = args.tunes or ("full,lora,qlora" if args.device == "cuda" else "full,lora")
    args.axolotl = args.device == "cuda" if args.axolotl is None else args.axolotl
    C.ARGS = args
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: run with --device cpu", flush=True)
        return 2
    if args.device == "cuda":  # before the first cuBLAS call: what deterministic cuBLAS needs (trainer check)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    C.T0 = time.perf_counter()
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
    from .report import markdown

    text = markdown()
    print("\n" + text, flush=True)
    try:
        out_stem().with_suffix(".md").write_text(text)
    except Exception:
        traceback.print_exc()
    save()
    print(f"written: {out_stem().name}.md and .json", flush=True)
    return 0
