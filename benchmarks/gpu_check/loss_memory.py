"""Section 2: the loss alone (hidden states -> head -> ORPO loss, forward + backward) at vocab 128,256:
TRL's full-logits path against ours, chunked and unchunked, through `benchmarks.loss_memory` in this
process (GPU peaks are per side: ``max_memory_allocated`` is reset before each)."""

from __future__ import annotations

import argparse

from . import common as C
from .common import RESULTS, free, log, record_error, save


def section2() -> None:
    from benchmarks.loss_memory import SIDES, measure_side

    res = RESULTS["section2"]
    cuda = C.ARGS.device == "cuda"
    size = dict(vocab=32000, tokens=256, pairs=2, hidden=256) if C.ARGS.quick else dict(vocab=128256, tokens=1024,
                                                                                             pairs=2, hidden=2048)
    # CPU bf16 matmuls are slow, and CPU only checks the math here
    setup = dict(size, chunk_size=512, device=C.ARGS.device, dtype="bfloat16" if cuda else "float32", frozen_head=False)
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
