"""One ORPO workload through every implementation, shape, tuning and device, written after every configuration;
exit status 1 when a configuration failed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import report
from .impls import IMPLS, cpu_threads, run, skip_reason
from .measure import matmul_peak_tflops
from .trainers import run_job  # noqa: F401 (`--job`: one configuration in a child process)
from .workload import BETA, DEFAULT_VOCABS, MAX_LENGTH, REPO, SHAPES, build_model_dir, load_tokenizer, \
    missing_inputs, write_workload

NOMINAL_TFLOPS = 989.0  # H100/H200 SXM dense bf16


def add_arguments(p) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--smoke", action="store_true", help="smallest model and shapes, 1 warm-up + 2 timed steps")
    p.add_argument("--scale", choices=("smoke", "cpu", "gpu"), help="model and shape sizes (default: by device)")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="default: both")
    p.add_argument("--tunes", nargs="+", choices=("full", "lora"), default=["full"], help="default: full")
    p.add_argument("--impls", nargs="+", choices=list(IMPLS), help="default: all")
    p.add_argument("--vocabs", nargs="+", type=int, help="default: 49,152 (smoke, cpu), 128,256 (gpu)")
    p.add_argument("--steps", type=int, help="timed steps (default 6; smoke 2; cuda 8)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 2; smoke 1; cuda 3)")
    p.add_argument("--isolation", choices=("process", "inline"), default="process", help="a process per configuration")
    p.add_argument("--liger-compiled", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA only")
    p.add_argument("--max-length", type=int, help=f"default {MAX_LENGTH} (cpu, smoke: the package's), 2048 (gpu)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="default benchmarks/results")
    p.add_argument("--tag", help="added to the output name")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per configuration (default 1800)")
    p.add_argument("--keep", action="store_true", help="keep the temporary models, data and logs")


def notes(groups: list[dict]) -> list[str]:
    out = ["Same texts everywhere, no chat template; the Axolotl runs are the real `axolotl train config.yml` "
           "(README.md here: how each recipe reads the rows and is timed)."]
    for group in groups:
        for name, entry in group["impls"].items():
            trainer = entry["result"].get("trainer") or {}
            text = f"{IMPLS[name].label}: `{trainer.get('trainer_class')}` with `{trainer.get('collator_class')}`"
            text += "".join(f", {k}={v}" for k, v in (trainer.get("collator") or {}).items())
            plan = trainer.get("speed_plan") or {}
            text += "".join(f"; plan {k}={v}" for k, v in plan.items() if k != "fallbacks")
            text += "".join(f"; fallback: {f}" for f in plan.get("fallbacks") or ())
            if trainer and text + "." not in out:
                out.append(text + ".")
        uniques = {n: sum(e["result"]["tokens"]["unique_per_batch"]) for n, e in group["impls"].items()
                   if "tokens" in e["result"]}
        if len(set(uniques.values())) > 1:
            out.append(f"{group['shape']['name']}/{group['tune']}: unique tokens of the timed batches differ by "
                       f"tokenisation: {uniques}.")
    return out


def write(full: dict, args, root: Path, final: bool) -> None:
    """Write the JSON and Markdown (after every configuration, so a run cut short keeps what it measured)."""
    out = report.scrub(dict(full, notes=notes(full["groups"]), complete=final), {str(root): "<work>"})
    text = report.markdown(out)
    report.write_result(args.out / full["name"], out, text)
    if final:
        print(f"\n{text}\nwritten: {report.scrub(str(args.out / full['name']))}.md and .json", flush=True)


def run_one(args, impl_name: str, job: dict, peaks: dict) -> dict:
    """One configuration (or why it is skipped) and its metrics, with a line of progress before and after."""
    impl, label = IMPLS[impl_name], f"[{job['shape']} / {job['tune']}] {IMPLS[impl_name].label}"
    reason = skip_reason(impl, args.device, job["tune"])
    print(f"{label}: skipped, {reason}" if reason else f"{label}: running ...", flush=True)
    if reason:
        return {"result": {"skipped": reason}}
    result = run(impl, job, args.timeout, args.isolation == "inline")
    m = report.metrics(result, args.device, peaks)
    if "error" in result:
        done = f"FAILED ({result['error']})\n{result['log_tail'][-3000:]}"
    else:
        done = (f"{m['pairs_per_s']:.3g} pairs/s, {m['tokens_per_s']:.0f} unique tok/s, peak {m['peak_gib']:.2f} GiB, "
                f"processed/unique {m['processed_unique_ratio']:.2f} ({result['process_seconds']:.0f} s)")
    print(f"{label}: {done}", flush=True)
    return {"result": result, "metrics": m}


def run_groups(args, full: dict, root: Path, peaks: dict) -> None:
    """Every vocabulary x shape x tuning x implementation, the results written after each."""
    settings, tokenizer = full["settings"], load_tokenizer()
    for vocab in args.vocabs:
        model_dir = root / f"model-{vocab}"
        model = build_model_dir(model_dir, args.scale, vocab, args.device, seed=settings["seed"])
        for shape_name in args.shapes:
            shape, data_path = SHAPES[shape_name][args.scale], root / f"{shape_name}.jsonl"
            rows = (args.warmup + args.steps) * shape.pairs_per_step
            workload = write_workload(data_path, tokenizer, shape, rows, seed=settings["seed"])
            for tune in args.tunes:
                group = {"shape": workload["shape"], "shape_text": shape.describe(), "tune": tune, "model": model,
                         "workload": workload, "impls": {}}
                full["groups"].append(group)
                for impl_name in args.impls:
                    job = dict(settings, model_dir=str(model_dir), data_path=str(data_path), shape=shape_name,
                               micro_batch=shape.pairs_per_step, tune=tune,
                               work_dir=str(root / "runs" / f"{shape_name}-{tune}-{vocab}-{impl_name}"))
                    group["impls"][impl_name] = run_one(args, impl_name, job, peaks)
                    report.add_ratios(group["impls"])
                    write(full, args, root, final=False)


def main(args) -> int:
    cuda = args.device == "cuda"
    args.scale = args.scale or ("smoke" if args.smoke else "gpu" if cuda else "cpu")
    args.shapes, args.impls = args.shapes or list(SHAPES), args.impls or list(IMPLS)
    args.vocabs = args.vocabs or list(DEFAULT_VOCABS[args.scale])
    args.steps = args.steps or (2 if args.smoke else 8 if cuda else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3 if cuda else 2)
    args.max_length = args.max_length or (2048 if args.scale == "gpu" else MAX_LENGTH)
    args.liger_compiled = cuda if args.liger_compiled == "auto" else args.liger_compiled == "on"
    missing = missing_inputs()
    if missing:
        print("benchmark inputs are absent: " + "; ".join(missing))
        return 2
    root = Path(tempfile.mkdtemp(prefix="merlina-bench-"))
    name = "-".join([report.machine_slug(args.device)] + ["smoke"] * args.smoke + ([args.tag] if args.tag else []))
    settings = dict(command=report.command("train", args.argv), device=args.device, scale=args.scale, steps=args.steps,
                    warmup=args.warmup, learning_rate=1e-5, beta=BETA, max_length=args.max_length,
                    max_prompt_length=args.max_length * 7 // 8, seed=0, isolation=args.isolation,
                    liger_compiled=args.liger_compiled, cpu_threads=cpu_threads() if args.device == "cpu" else None)
    peaks = {}
    if cuda:  # the bf16 matmul peak, timed now (in a child process unless inline)
        code = "from benchmarks.measure import matmul_peak_tflops; print(matmul_peak_tflops())"
        measured = matmul_peak_tflops() if args.isolation == "inline" else float(subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout.split()[-1])
        peaks = {"measured": measured, "nominal": NOMINAL_TFLOPS}
        print(f"bf16 matmul peak: {peaks['measured']:.0f} TFLOP/s measured", flush=True)
    full = {"name": name, "settings": settings, "environment": report.environment(args.device), "peaks_tflops": peaks,
            "groups": []}
    try:
        run_groups(args, full, root, peaks)
        write(full, args, root, final=True)
    finally:
        failed = any("error" in e["result"] for g in full["groups"] for e in g["impls"].values())
        if args.keep or failed:
            print(f"models, data and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0
