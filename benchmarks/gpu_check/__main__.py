"""``python -m benchmarks.gpu_check``: options, the environment record, and the run of the chosen checks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

# .common first: it starts the clock (common.T0) before torch is imported, and puts the repository root on sys.path
from . import common as C  # isort: skip
from . import __doc__ as PACKAGE_DOC
from .common import RESULTS, free, log, out_stem, record_error, save
from .equivalence import section1
from .loss_memory import section2
from .report import markdown
from .trainer_check import run_trainer_check

import torch  # isort: skip  (after .common: the budget counts the torch import)


def environment() -> None:
    from benchmarks.report import environment as describe

    env = RESULTS["env"]
    env.update(describe(C.ARGS.device), quick=C.ARGS.quick, argv=sys.argv[1:] if C.ARGS.argv is None else C.ARGS.argv)
    if C.ARGS.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        env["tf32"] = False
    log(f"environment: {json.dumps(env)}")
    save()


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=PACKAGE_DOC.split("\n\n")[0])
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
    args = p.parse_args(argv)
    args.argv = argv
    args.sections = {s.strip() for s in (args.sections or ("" if args.trainer else "1,2")).split(",") if s.strip()}
    args.tunes = args.tunes or ("full,lora,qlora" if args.device == "cuda" else "full,lora")
    args.axolotl = args.device == "cuda" if args.axolotl is None else args.axolotl
    return args


def main(argv=None) -> int:
    C.ARGS = parse(argv)
    if C.ARGS.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: run with --device cpu", flush=True)
        return 2
    if C.ARGS.device == "cuda":  # before the first cuBLAS call: what deterministic cuBLAS needs (trainer check)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    C.T0 = time.perf_counter()
    fresh = {"env": {}, "section1": {}, "section2": {}, "trainer": {}, "errors": []}
    RESULTS.clear()
    RESULTS.update(fresh)
    # section 1 changes dynamo settings for flex_attention; the trainer check, determinism: restore both
    dynamo = {k: getattr(torch._dynamo.config, k) for k in ("recompile_limit", "automatic_dynamic_shapes")}
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch._dynamo.config.recompile_limit = max(dynamo["recompile_limit"], 64)  # flex: one entry per shape
    try:
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


if __name__ == "__main__":
    sys.exit(main())
