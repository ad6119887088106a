"""``python -m benchmarks.run``: the same ORPO workload through every implementation, one process each.

    python -m benchmarks.run                      # full CPU run: 2 shapes x 2 vocabularies x 5 implementations
    python -m benchmarks.run --smoke              # smallest configuration, all five implementations
    python -m benchmarks.run --shapes long-prompt --vocabs 49152 --impls axolotl_orpo axolotl_merlina trl merlina
    python -m benchmarks.run --device cuda        # bigger bf16 model, direct implementations, MFU

Writes ``<out>/<machine>.json`` and ``<out>/<machine>.md`` (``-smoke`` added in smoke mode) and
prints the Markdown. Exit status 1 when a configuration that could run failed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from . import loss_memory, report
from .impls import IMPLS, cpu_threads, run, skip_reason
from .model import SIZES, build_model_dir
from .workload import SHAPES, load_tokenizer, missing_inputs, write_workload

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, short long-prompt shape, 1 warm-up + 2 timed steps")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="default: both (smoke: long-prompt)")
    p.add_argument("--vocabs", nargs="+", type=int, help="default: 49152 128256 (smoke: 49152)")
    p.add_argument("--impls", nargs="+", choices=list(IMPLS), help="default: all five")
    p.add_argument("--steps", type=int, help="timed steps (default 6; smoke 2; cuda 10)")
    p.add_argument("--warmup", type=int, help="warm-up steps, not timed (default 2; smoke 1; cuda 3)")
    p.add_argument("--micro-batch", type=int, default=4, help="pairs per step (default 4)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--model-size", choices=sorted(SIZES), help="default: smoke / cpu / cuda by mode")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 peak for MFU (default 989: H100 SXM)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per configuration (default 1800)")
    p.add_argument("--preprocess", dest="preprocess", action="store_true", default=None,
                   help="include benchmarks.preprocess numbers (default: on, off with --smoke)")
    p.add_argument("--no-preprocess", dest="preprocess", action="store_false")
    p.add_argument("--loss-memory", dest="loss_memory", action="store_true", default=None,
                   help="include the loss-only memory micro-benchmark (default: on, off with --smoke)")
    p.add_argument("--no-loss-memory", dest="loss_memory", action="store_false")
    p.add_argument("--keep", action="store_true", help="keep the temporary models, data and logs")
    args = p.parse_args(argv)
    smoke, cuda = args.smoke, args.device == "cuda"
    args.shapes = args.shapes or (["long-prompt"] if smoke else ["ultrafeedback", "long-prompt"])
    args.vocabs = args.vocabs or ([49152] if smoke else [49152, 128256])
    args.impls = args.impls or list(IMPLS)
    args.steps = args.steps or (2 if smoke else 10 if cuda else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 3 if cuda else 2)
    args.model_size = args.model_size or ("smoke" if smoke else "cuda" if cuda else "cpu")
    args.preprocess = (not smoke) if args.preprocess is None else args.preprocess
    args.loss_memory = (not smoke) if args.loss_memory is None else args.loss_memory
    return args


def preprocessing(repeats: int) -> dict:
    try:
        from . import preprocess
    except ModuleNotFoundError as error:
        if error.name != "benchmarks.preprocess":
            raise
        return {"message": "No preprocessing numbers: `benchmarks/preprocess.py` does not exist yet."}
    if not hasattr(preprocess, "measure_preprocessing"):
        return {"message": "No preprocessing numbers: `benchmarks.preprocess` has no `measure_preprocessing` yet."}
    try:
        return preprocess.measure_preprocessing(repeats)
    except Exception as error:  # someone else's module: report, do not invent numbers
        return {"message": f"`benchmarks.preprocess.measure_preprocessing({repeats})` failed: {error!r}"}


def notes_for(groups: list[dict]) -> list[str]:
    notes = [
        "(a) and (b) run the real `axolotl train config.yml` CLI (accelerate launcher); the timing callback "
        "is the Axolotl plugin `benchmarks.axolotl_timing.BenchTimingPlugin` inside the launched process.",
        "Same texts everywhere, no chat template: (a) gets the JSONL entry with no `type`, so Axolotl hands "
        "the plain prompt/chosen/rejected strings to TRL's ORPOTrainer, which tokenises them as in (c); (b) "
        "uses `type: prompt_pairs`. Axolotl's only ORPO type (`chat_template.argilla`) needs message lists "
        "and renders a chat template, so it is not used.",
        "Same rows in the same order: `shuffle_merged_datasets: false` in the YAML and a sequential sampler "
        "(`train_sampling_strategy: sequential`, set through the timing plugin's training args; TRL's trainer "
        "under `rl: orpo` ignores `curriculum_sampling`).",
        "Every training process gets the same `OMP_NUM_THREADS` (threads per run in the JSON, "
        "`trainer.torch_threads`): `accelerate launch`, which `axolotl train` re-executes itself under, "
        "sets it to 1 on CPU when it is unset, which would leave the Axolotl runs on one thread.",
    ]
    seen = set()
    for group in groups:
        for name, entry in group["impls"].items():
            result = entry["result"]
            if "skipped" in result and name not in seen:
                notes.append(f"({IMPLS[name].letter}) skipped: {result['skipped']}.")
                seen.add(name)
            trainer = result.get("trainer") or {}
            collator, plan = trainer.get("collator") or {}, trainer.get("speed_plan")
            key = (name, json.dumps(collator, sort_keys=True), json.dumps(plan, sort_keys=True))
            if trainer and key not in seen:
                seen.add(key)
                text = f"({IMPLS[name].letter}) ran `{trainer['trainer_class']}` with `{trainer['collator_class']}`"
                if collator:
                    text += " " + ", ".join(f"{k}={v}" for k, v in collator.items())
                if plan:
                    text += "; speed plan " + ", ".join(f"{k}={v}" for k, v in plan.items() if k != "fallbacks")
                    text += "".join(f"; fallback: {f}" for f in plan.get("fallbacks") or ())
                notes.append(text + ".")
        uniques = {n: e["result"]["tokens"]["unique_tokens"] for n, e in group["impls"].items() if "tokens" in e["result"]}
        if len(set(uniques.values())) > 1:
            notes.append(f"{group['shape']['name']}/{group['model']['vocab_size']}: unique tokens of the timed batches "
                         f"differ by tokenisation: {uniques}.")
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = missing_inputs()
    if missing:
        print("benchmark inputs are absent (../shared/data beside the repo): " + ", ".join(map(str, missing)))
        return 2
    root = Path(tempfile.mkdtemp(prefix="merlina-bench-"))
    slug = report.machine_slug(args.device) + ("-smoke" if args.smoke else "")
    settings = dict(smoke=args.smoke, device=args.device, steps=args.steps, warmup=args.warmup,
                    micro_batch=args.micro_batch, learning_rate=1e-5, beta=0.1, max_length=1024, seed=0,
                    model_size=args.model_size, peak_tflops=args.peak_tflops,
                    cpu_threads=cpu_threads() if args.device == "cpu" else None,
                    command="python -m benchmarks.run " + shlex.join(argv if argv is not None else sys.argv[1:]))
    tokenizer = load_tokenizer()
    rows = (args.warmup + args.steps) * args.micro_batch
    groups, failed = [], False
    try:
        for vocab in args.vocabs:
            model_dir = root / f"model-{vocab}"
            model = build_model_dir(model_dir, args.model_size, vocab, seed=settings["seed"])
            for shape_name in args.shapes:
                shape = SHAPES[shape_name][1 if args.smoke else 0]
                data_path = root / f"{shape_name}.jsonl"
                workload = write_workload(data_path, tokenizer, shape, rows, seed=settings["seed"])
                group = {"shape": workload["shape"], "shape_text": shape.describe(), "model": model,
                         "workload": workload, "impls": {}}
                for name in args.impls:
                    impl = IMPLS[name]
                    reason = skip_reason(impl, args.device)
                    label = f"[{shape_name} / vocab {vocab}] ({impl.letter}) {impl.label}"
                    if reason:
                        print(f"{label}: skipped, {reason}", flush=True)
                        group["impls"][name] = {"result": {"skipped": reason}}
                        continue
                    print(f"{label}: running ...", flush=True)
                    job = dict(settings, model_dir=str(model_dir), data_path=str(data_path),
                               work_dir=str(root / "runs" / f"{shape_name}-{vocab}-{name}"))
                    result = run(impl, job, args.timeout)
                    entry = {"result": result, "metrics": report.metrics(result, args.device, args.peak_tflops)}
                    group["impls"][name] = entry
                    if "error" in result:
                        failed = True
                        print(f"{label}: FAILED ({result['error']}); log {result['log']}\n{result['log_tail'][-2000:]}",
                              flush=True)
                    else:
                        m = entry["metrics"]
                        print(f"{label}: {m['pairs_per_s']:.3f} pairs/s, {m['tokens_per_s']:.0f} tokens/s, "
                              f"peak {m['peak_mib']:.0f} MiB, processed/unique {m['processed_unique_ratio']:.2f} "
                              f"(process {result['process_seconds']:.0f} s)", flush=True)
                report.add_ratios(group["impls"])
                groups.append(group)
        full = {"machine_slug": slug, "machine": report.machine_info(args.device), "settings": settings,
                "groups": groups, "notes": notes_for(groups),
                "preprocessing": preprocessing(1 if args.smoke else 3) if args.preprocess else
                {"message": "Preprocessing not measured in this run (`--smoke` or `--no-preprocess`)."}}
        if args.loss_memory:
            print("loss-only memory micro-benchmark (python -m benchmarks.loss_memory) ...", flush=True)
            full["loss_memory"] = loss_memory.measure_all(loss_memory.parser().parse_args(["--device", args.device]))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{slug}.json").write_text(json.dumps(full, indent=1, default=str))
        text = report.markdown(full)
        (args.out / f"{slug}.md").write_text(text)
        print("\n" + text)
        print(f"written: {args.out / (slug + '.md')}, {args.out / (slug + '.json')}")
    finally:
        if args.keep or failed:
            print(f"models, data and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
