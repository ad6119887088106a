"""The check's shared state (results, parsed options, start time) and the helpers its sections use.

``ARGS`` is set by `benchmarks.gpu_check.main`: other modules read it as ``common.ARGS`` at call time.
"""

from __future__ import annotations

import gc
import os
import time
import traceback
from pathlib import Path

import torch

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


def out_dir() -> Path:
    """``--out``, else ``$OUT`` (the GPU machine's output folder), else ``benchmarks/results``."""
    return Path(ARGS.out or os.environ.get("OUT") or REPO / "benchmarks" / "results")


def out_stem() -> Path:
    """``<out>/<machine>-trainer-check`` or ``<out>/<machine>-gpu-check`` (``-quick`` added for --quick)."""
    from ..report import machine_slug

    kind = "trainer-check" if ARGS.trainer and not ARGS.sections else "gpu-check"
    return out_dir() / f"{machine_slug(ARGS.device)}-{kind}{'-quick' if ARGS.quick else ''}"


def save() -> None:
    """Write the results so far, machine paths scrubbed (rewritten after every measurement)."""
    from ..report import scrub, write_result

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


def sync() -> None:
    if ARGS.device == "cuda":
        torch.cuda.synchronize()


def free() -> None:
    gc.collect()
    if ARGS.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (|a - b| where b is all zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    return diff / scale if scale > 0 else diff
