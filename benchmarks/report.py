"""Derived numbers (pairs/s, tokens/s, memory, ratios against the baselines) and the Markdown report."""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import re
import subprocess
from pathlib import Path

from .impls import BASELINES, IMPLS
from .workload import REPO

MiB = 1024 * 1024
PACKAGES = ("torch", "transformers", "trl", "axolotl", "accelerate", "datasets", "merlina-orpo-plugin")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_slug(device: str) -> str:
    if device == "cuda":
        import torch

        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return f"cpu-{os.cpu_count()}core"


def machine_info(device: str) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git": _git_revision(),
    }
    if device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name()
    return info


def _git_revision() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return f"{head}{' + uncommitted changes' if dirty else ''}" if head else None
    except OSError:
        return None


def metrics(result: dict, device: str, peak_tflops: float) -> dict:
    """pairs/s, tokens/s, memory and the processed/unique ratio of one configuration's result."""
    if "error" in result or "skipped" in result:
        return {}
    seconds = sum(result["step_seconds"])
    tokens, memory = result["tokens"], result["memory"]
    out = {
        "step_seconds_mean": seconds / len(result["step_seconds"]),
        "step_seconds_median": sorted(result["step_seconds"])[len(result["step_seconds"]) // 2],
        "pairs_per_s": tokens["pairs"] / seconds,
        "tokens_per_s": tokens["unique_tokens"] / seconds,
        "processed_unique_ratio": tokens["processed_unique_ratio"],
    }
    if device == "cuda" and "cuda_max_allocated" in memory:
        out["peak_mib"] = memory["cuda_max_allocated"] / MiB
        out["growth_mib"] = (memory["cuda_max_allocated"] - memory["cuda_allocated_before_train"]) / MiB
        params = result["trainer"]["params_without_input_embeddings"]
        out["mfu"] = 6 * params * out["tokens_per_s"] / (peak_tflops * 1e12)
    else:
        out["peak_mib"] = memory["peak_rss_train_kb"] / 1024
        out["before_mib"] = memory["rss_before_train_kb"] / 1024
        out["growth_mib"] = out["peak_mib"] - out["before_mib"]
        cpu = result.get("step_cpu_seconds") or []
        out["cpu_seconds_per_step"] = sum(cpu) / len(cpu) if cpu else None
    return out


def add_ratios(group: dict[str, dict]) -> None:
    """Speed and memory of each implementation against each baseline present in ``group``."""
    for base in BASELINES:
        ref = group.get(base, {}).get("metrics")
        if not ref:
            continue
        for entry in group.values():
            m = entry.get("metrics")
            if m:
                m[f"speedup_vs_{base}"] = m["pairs_per_s"] / ref["pairs_per_s"]
                m[f"peak_vs_{base}"] = m["peak_mib"] / ref["peak_mib"]
                if ref["growth_mib"] > 0:
                    m[f"growth_vs_{base}"] = m["growth_mib"] / ref["growth_mib"]


def _fmt(value, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def group_table(group: dict[str, dict], device: str) -> list[str]:
    mem = "GPU peak alloc MiB" if device == "cuda" else "peak RSS MiB (train)"
    head = ["impl", "pairs/s", "tokens/s", "s/step"] + ([] if device == "cuda" else ["CPU s/step"]) + [mem, "growth MiB", "processed/unique",
            "speed vs c", "speed vs a", "peak vs c", "peak vs a", "growth vs c", "growth vs a"]
    if device == "cuda":
        head.append("MFU")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in group.items():
        impl = IMPLS[name]
        label = f"({impl.letter}) {impl.label}"
        if "skipped" in entry["result"]:
            lines.append(f"| {label} | skipped: {entry['result']['skipped']} |" + " |" * (len(head) - 2))
            continue
        if "error" in entry["result"]:
            lines.append(f"| {label} | FAILED ({entry['result']['error']}, log: {entry['result'].get('log')}) |"
                         + " |" * (len(head) - 2))
            continue
        m = entry["metrics"]
        cells = [label, _fmt(m["pairs_per_s"]), _fmt(m["tokens_per_s"], ".0f"), _fmt(m["step_seconds_mean"])]
        if device != "cuda":
            cells.append(_fmt(m.get("cpu_seconds_per_step")))
        cells += [_fmt(m["peak_mib"], ".0f"), _fmt(m["growth_mib"], ".0f"), _fmt(m["processed_unique_ratio"])]
        for key in ("speedup_vs_trl", "speedup_vs_axolotl_orpo", "peak_vs_trl", "peak_vs_axolotl_orpo",
                    "growth_vs_trl", "growth_vs_axolotl_orpo"):
            cells.append(_fmt(m.get(key)) + ("x" if key in m else ""))
        if device == "cuda":
            cells.append(_fmt(m.get("mfu", float("nan")) * 100, ".1f") + "%")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _flatten(value, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _flatten(v, f"{prefix}{k}." if prefix or k else k)]
    return [(prefix.rstrip("."), value)]


def markdown(report: dict) -> str:
    info, settings = report["machine"], report["settings"]
    lines = [
        f"# ORPO benchmark: {report['machine_slug']}{' (smoke)' if settings['smoke'] else ''}",
        "",
        f"- date: {info['date']}; git: {info['git']}",
        f"- machine: {info['cpu']}, {info['cpu_count']} CPUs, {info['platform']}"
        + (f"; GPU: {info['gpu']}" if info.get("gpu") else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v),
        f"- command: `{settings['command']}`",
        f"- training: full fine-tune, AdamW (adamw_torch), lr {settings['learning_rate']}, constant schedule, "
        f"max_grad_norm 1.0, micro batch {settings['micro_batch']} pairs, grad accumulation 1, "
        f"max length {settings['max_length']}, beta {settings['beta']}, "
        f"{'bf16' if settings['device'] == 'cuda' else 'float32'}, sdpa attention, no gradient checkpointing, "
        + (f"{settings['cpu_threads']} CPU threads per run (OMP_NUM_THREADS), " if settings.get("cpu_threads") else "")
        + f"sequential sampling, seed {settings['seed']}",
        f"- timing: {settings['warmup']} warm-up step(s) excluded, then {settings['steps']} timed steps "
        "(on_step_begin -> on_step_end wall clock: forward, backward, clipping, optimizer step); each "
        "configuration in its own fresh process"
        + ("" if settings["device"] == "cuda" else "; CPU s/step = the training process's CPU time (all threads) "
           "per timed step, less sensitive than wall clock to other work on the machine"),
        "- tokens/s counts unique tokens (prompt once + chosen + rejected, each implementation's own "
        "tokenisation); processed/unique = token positions the model ran (padding and repeated prompts "
        "included) / unique tokens, over the same timed batches",
        "- memory: " + ("`torch.cuda.max_memory_allocated` during training; growth = peak - allocated before training"
                        if settings["device"] == "cuda" else
                        "peak RSS of the training process during training (high-water mark reset at train begin); "
                        "growth = peak - RSS right before training (optimizer state, activations, logits)"),
        "- ratios: speed = pairs/s over the baseline's; peak/growth = memory over the baseline's; "
        "(c) = TRL direct, (a) = Axolotl `rl: orpo`",
    ]
    if settings["device"] == "cuda":
        lines.append(f"- MFU = 6 x parameters (without the input embedding) x unique tokens/s / "
                     f"{settings['peak_tflops']} TFLOP/s (bf16 peak)")
    for group in report["groups"]:
        model = group["model"]
        lines += ["", f"## {group['shape']['name']}, vocab {model['vocab_size']:,}", "",
                  f"Workload: {group['workload']['rows']} rows, {group['shape_text']}; measured plain-text "
                  f"means: prompt {group['workload']['mean_prompt_tokens']:.0f}, chosen "
                  f"{group['workload']['mean_chosen_tokens']:.0f}, rejected {group['workload']['mean_rejected_tokens']:.0f} "
                  f"tokens. Model: Llama, hidden {model['hidden_size']}, {model['num_hidden_layers']} layers, "
                  f"{model['num_attention_heads']} heads, intermediate {model['intermediate_size']}, "
                  f"{model['params'] / 1e6:.1f}M parameters.", ""]
        lines += group_table(group["impls"], settings["device"])
        loads = [f"{n}: {e['result'].get('loadavg_before', ['?'])[0]:.1f}" for n, e in group["impls"].items()
                 if isinstance(e["result"].get("loadavg_before", [None])[0], float)]
        if loads:
            lines += ["", "1-minute load average when each run started (other work on the machine skews timings): "
                      + ", ".join(loads)]
    if report.get("loss_memory"):
        from .loss_memory import markdown as loss_markdown

        lines += ["", "## Loss-only memory (`python -m benchmarks.loss_memory`)", "", loss_markdown(report["loss_memory"]).rstrip()]
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    lines += ["", "## Preprocessing", ""]
    pre = report.get("preprocessing")
    if isinstance(pre, dict) and "message" not in pre:
        lines += ["| measurement | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v, '.4g') if isinstance(v, float) else v} |" for k, v in _flatten(pre)]
    else:
        lines.append(pre["message"] if isinstance(pre, dict) else str(pre))
    return "\n".join(lines) + "\n"
