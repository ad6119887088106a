"""``python -m benchmarks.gpu_check``: options, the environment record, and the run of the chosen sections."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import traceback

# .common first: it starts the clock (common.T0) before torch is imported, and puts the repository root on sys.path
from . import common as C  # isort: skip
from . import __doc__ as PACKAGE_DOC
from .common import RESULTS, free, log, out_dir, record_error, save
from .equivalence import section1
from .loss_memory import section3
from .report import markdown
from .speed import section2

import torch  # isort: skip  (after .common: the budget counts the torch import)


def environment() -> None:
    env = RESULTS["env"]
    env.update(device=C.ARGS.device, torch=torch.__version__, python=platform.python_version(), quick=C.ARGS.quick,
               argv=sys.argv[1:])
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except Exception as error:
        env["transformers"] = repr(error)
    try:
        import trl

        env["trl"] = trl.__version__
    except Exception as error:
        env["trl"] = f"not importable: {error!r}"
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)  # flex: one entry per shape
    if C.ARGS.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        env["device_name"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        env["tf32"] = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    log(f"environment: {json.dumps(env)}")
    save()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=PACKAGE_DOC.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="small sizes (CPU validation of the code paths)")
    p.add_argument("--sections", default="1,2,3", help="comma-separated subset of 1,2,3")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget from start; section 2 skips what would not fit")
    p.add_argument("--tol", type=float, default=1e-5, help="section 1 pass bar (float32)")
    p.add_argument("--out", help="output folder (default: $OUT)")
    p.add_argument("--variants", default="a,b,d,c", help="section 2 variants, letters of SPEED_VARIANTS (default a,b,d,c)")
    p.add_argument("--skip-flex", action="store_true", help="leave the flex_attention variants out (debugging)")
    C.ARGS = p.parse_args(argv)
    if C.ARGS.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: run with --device cpu", flush=True)
        return 2
    sections = {s.strip() for s in C.ARGS.sections.split(",") if s.strip()}
    try:
        environment()
    except Exception:
        record_error("environment")
    # section 3 takes seconds; section 2 then gets whatever is left of the budget
    for number, fn in (("1", section1), ("3", section3), ("2", section2)):
        if number not in sections:
            continue
        log(f"=== section {number} ===")
        try:
            fn()
        except Exception:
            record_error(f"section {number}")
            try:
                free()
            except Exception:
                pass
        save()
    text = markdown()
    print("\n" + text, flush=True)
    d = out_dir()
    if d is not None:
        try:
            (d / "gpu_check.md").write_text(text)
        except Exception:
            traceback.print_exc()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
