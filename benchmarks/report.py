"""What every result file shares (environment, `scrub`, `publish`, `table`); the training benchmark's numbers."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

from .impls import BASELINES, IMPLS, LIMIT
from .workload import REPO

GiB = 2**30
PACKAGES = ("torch", "transformers", "trl", "peft", "liger-kernel", "accelerate", "datasets", "axolotl",
            "bitsandbytes", "merlina-orpo-plugin")
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~>\-])/(?:[\w.\-]+/)+[\w.\-]*")


def scrub(value, extra_roots: dict[str, str] | None = None):
    """``value`` (str / list / dict, recursively) with machine paths replaced by placeholders (checkout, temp, ...)."""
    if isinstance(value, dict):
        return {k: scrub(v, extra_roots) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, extra_roots) for v in value]
    if not isinstance(value, str):
        return value
    paths = sysconfig.get_paths()  # a later key wins: the checkout and $OUT over ``extra_roots`` over the rest
    roots = {str(Path.home()): "~", tempfile.gettempdir(): "<tmp>", paths["purelib"]: "<site-packages>",
             paths["platlib"]: "<site-packages>", **(extra_roots or {}), str(REPO): ".", sys.prefix: "<python>",
             sys.base_prefix: "<python>", os.environ.get("OUT", ""): "$OUT"}
    for root, placeholder in sorted(roots.items(), key=lambda kv: -len(kv[0])):  # longest first
        if root and root != "/":
            value = value.replace(root, placeholder)
    return ABSOLUTE_PATH.sub(lambda m: "<abs>/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], value)


def command(subcommand: str, argv) -> str:
    return f"python -m benchmarks {subcommand} {shlex.join(argv)}".rstrip()


def write_result(stem: Path, data: dict, text: str | None = None) -> None:
    """``<stem>.json`` (and ``<stem>.md`` when ``text`` is given), the folder made if need be."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    if text is not None:
        Path(f"{stem}.md").write_text(text)


def publish(args, subcommand: str, result: dict, device: str = "cpu", markdown=None, indent: int | None = 1,
            suffix: str | None = None, print_json: bool = False) -> dict:
    """Record command and environment, scrub, print, and with ``--out`` write ``<machine>-<suffix or subcommand>``."""
    result = scrub({"command": command(subcommand, args.argv), "environment": environment(device), **result})
    text = markdown(result) if markdown else None
    print(json.dumps(result, indent=indent) if print_json or not text else text)
    if getattr(args, "out", None):
        write_result(args.out / f"{machine_slug(device)}-{suffix or subcommand}", result, text)
    return result


def table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(str, r)) + " |"
                                                                          for r in rows]


def machine_slug(device: str) -> str:
    if device == "cuda":
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return f"cpu-{os.cpu_count()}core"


def git_revision() -> str | None:
    try:
        run = dict(cwd=REPO, capture_output=True, text=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",  # code, not results
                                ":(exclude)benchmarks/results"], **run).stdout.strip()
        return f"{head}{' + uncommitted changes' if dirty else ''}" if head else None
    except OSError:
        return None


def environment(device: str) -> dict:
    """Date, machine, versions, git revision."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        cpu = re.search(r"^model name\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        cpu = None
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device,
            "cpu": cpu[1].strip() if cpu else platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
            "cuda": torch.version.cuda, "git": git_revision()}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory
                    / GiB)
    return info


def metrics(result: dict, device: str, peaks: dict[str, float]) -> dict:
    """Median step, pairs/s, unique tokens/s, spread, MFU, peak GiB and processed/unique of one result."""
    if "error" in result or "skipped" in result or "step_seconds" not in result:
        return {}
    seconds, tokens, memory = result["step_seconds"], result["tokens"], result["memory"]
    per_step = [u / s for u, s in zip(tokens["unique_per_batch"], seconds)]
    if device == "cuda":
        peak, before = memory["cuda_max_allocated"], memory["cuda_allocated_before"]
    else:  # kB
        peak, before = memory["peak_rss_kb"] * 2**10, (memory["rss_before_kb"] or 0) * 2**10
    median = statistics.median(seconds)
    out = {"step_s_median": median, "step_s_min": min(seconds), "step_s_max": max(seconds),
           "pairs_per_s": tokens["pairs_per_batch"][0] / median, "tokens_per_s": statistics.median(per_step),
           "tokens_per_s_min": min(per_step), "tokens_per_s_max": max(per_step),
           "processed_unique_ratio": tokens["processed_unique_ratio"], "peak_gib": peak / GiB,
           "growth_gib": (peak - before) / GiB}
    if device != "cuda":
        cpu = result.get("step_cpu_seconds")
        out["cpu_s_per_step"] = statistics.median(cpu) if cpu else None
    flops = 6 * result["trainer"]["matmul_params"] * out["tokens_per_s"]
    out.update({f"mfu_{name}": flops / (tflops * 1e12) for name, tflops in peaks.items()})
    return out


def add_ratios(group: dict[str, dict]) -> None:
    """Speed and peak memory of each implementation over each baseline present; share of the limit."""
    refs = {base: group.get(base, {}).get("metrics") for base in (*BASELINES, LIMIT)}
    for m in [entry["metrics"] for entry in group.values() if entry.get("metrics")]:
        for base in [b for b in BASELINES if refs[b]]:
            m[f"speed_vs_{base}"] = m["pairs_per_s"] / refs[base]["pairs_per_s"]
            m[f"peak_vs_{base}"] = m["peak_gib"] / refs[base]["peak_gib"]
        if refs[LIMIT]:
            m["of_limit"] = m["tokens_per_s"] / refs[LIMIT]["tokens_per_s"]


def fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec) + suffix


def group_table(group: dict[str, dict], device: str, peaks: dict[str, float]) -> list[str]:
    """One shape and tuning: a row per implementation, a (column, cell of the metrics) pair per column."""
    present, limit = [b for b in BASELINES if group.get(b, {}).get("metrics")], group.get(LIMIT, {}).get("metrics")
    columns = [("pairs/s", lambda m: fmt(m["pairs_per_s"], ".3g")),
               ("step s median [min-max]",
                lambda m: f"{m['step_s_median']:.3g} [{m['step_s_min']:.3g}-{m['step_s_max']:.3g}]"),
               *[("CPU s/step", lambda m: fmt(m.get("cpu_s_per_step"), ".3g"))] * (device == "cpu"),
               ("unique tok/s", lambda m: fmt(m["tokens_per_s"], ",.0f")),
               *[(f"MFU ({n})", lambda m, n=n: fmt(100 * m[f"mfu_{n}"], ".1f", "%")) for n in peaks],
               ("peak GiB" if device == "cuda" else "peak RSS GiB", lambda m: fmt(m["peak_gib"])),
               ("processed/unique", lambda m: fmt(m["processed_unique_ratio"])),
               *[(f"{what} vs {BASELINES[b]}", lambda m, key=f"{what}_vs_{b}": fmt(m.get(key), ".2f", "x"))
                 for what in ("speed", "peak") for b in present],
               *[("of limit", lambda m: fmt(100 * m.get("of_limit", math.nan), ".0f", "%"))] * bool(limit)]
    rows = []
    for name, entry in group.items():
        result, m = entry["result"], entry.get("metrics")
        why = f"skipped: {result['skipped']}" if "skipped" in result else f"FAILED: {result.get('error')}"
        cells = [cell(m) for _, cell in columns] if m else [why] + [""] * (len(columns) - 1)
        rows.append([IMPLS[name].label] + cells)
    return table(["implementation"] + [head for head, _ in columns], rows)


def markdown(report: dict) -> str:
    """The training benchmark's Markdown: its settings, a table per group, notes."""
    lines = header(report)
    for group in report["groups"]:
        model, w = group["model"], group["workload"]
        lines += ["", f"## {group['shape']['name']}, {group['tune']}, vocab {model['vocab_size']:,}", "",
                  f"Workload: {w['rows']} rows, {group['shape_text']}; plain-text means: prompt "
                  f"{w['mean_prompt_tokens']:.0f}, chosen {w['mean_chosen_tokens']:.0f}, rejected "
                  f"{w['mean_rejected_tokens']:.0f} tokens. Model: Llama, hidden {model['hidden_size']}, "
                  f"{model['num_hidden_layers']} layers, {model['params'] / 1e6:,.0f}M parameters"
                  f"{', tied embeddings' if model['tie_word_embeddings'] else ''}.", ""]
        lines += group_table(group["impls"], report["settings"]["device"], report["peaks_tflops"])
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def header(report: dict) -> list[str]:
    """The settings every table shares; benchmarks/README.md, "What is measured", defines each figure."""
    env, s = report["environment"], report["settings"]
    cuda, gpu = s["device"] == "cuda", f"; GPU {env['gpu']}" if env.get("gpu") else ""
    threads = f", {s['cpu_threads']} CPU threads per run" if s.get("cpu_threads") else ""
    liger = ", TRL+Liger's loss not compiled" if s.get("liger_compiled") is False else ""
    return [f"# ORPO benchmark: {report['name']}", "",
            f"- command: `{s['command']}`; date {env['date']}; git {env['git']}",
            f"- machine: {env['cpu']}, {env['cpu_count']} CPUs{gpu}; Python {env['python']}; CUDA {env['cuda']}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
            f"- training: lr {s['learning_rate']} constant, beta {s['beta']}, max_length {s['max_length']}, "
            f"max_prompt_length {s['max_prompt_length']}, {'bf16' if cuda else 'float32'}, seed {s['seed']}{threads}"
            f"{liger}; {s['warmup']} warm-up step(s), then {s['steps']} timed; isolation {s['isolation']}",
            "- MFU peaks: " + (", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in report["peaks_tflops"].items()) or "-"),
            "- how each figure is measured: benchmarks/README.md, \"What is measured\""]
