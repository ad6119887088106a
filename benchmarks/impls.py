"""The implementations compared, whether each can run here, and how a configuration is launched."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .workload import REPO

PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # this venv's commands first


@dataclass(frozen=True)
class Impl:
    name: str
    label: str
    kind: str  # "axolotl" (the real `axolotl train` CLI) or "python" (`benchmarks.trainers`)
    requires: tuple[str, ...]


IMPLS = {i.name: i for i in (
    Impl("trl", "TRL 1.9 `ORPOTrainer`", "python", ("trl",)),
    Impl("trl_liger", "TRL + Liger `LigerFusedLinearORPOLoss`", "python", ("trl", "liger_kernel")),
    Impl("merlina", "ours, defaults", "python", ()),
    Impl("merlina_nospeed", "ours, speed features off", "python", ()),
    Impl("axolotl_orpo", "Axolotl `rl: orpo` (TRL)", "axolotl", ("axolotl", "trl")),
    Impl("axolotl_merlina", "Axolotl `rl: orpo_standalone` (ours)", "axolotl", ("axolotl",)),
    Impl("causal_lm", "causal-LM limit (HF loss)", "python", ()),
)}
BASELINES = {"trl": "TRL", "trl_liger": "TRL+Liger", "axolotl_orpo": "rl: orpo"}
LIMIT = "causal_lm"


def absent_reason(module: str) -> str | None:
    """None when ``module`` is importable; else why not (`gpu_check/fetch_wheels.sh`'s ``.whl/SKIPPED.json``)."""
    if importlib.util.find_spec(module) is not None:
        return None
    note = REPO / ".whl" / "SKIPPED.json"
    return (json.loads(note.read_text()) if note.exists() else {}).get(module) or f"`{module}` is not installed"


def skip_reason(impl: Impl, device: str, tune: str) -> str | None:
    reason = next(filter(None, map(absent_reason, impl.requires)), None)
    if reason or impl.kind != "axolotl":
        return reason
    if device != "cpu":
        return "the Axolotl CLI runs are CPU-only in this harness (Axolotl is not carried to the GPU machine)"
    if tune != "full":
        return "the Axolotl recipes here are full fine-tunes"
    return None if shutil.which("axolotl", path=PATH) else "the `axolotl` command is not on PATH"


TIMING_PLUGIN = "benchmarks.axolotl_timing.BenchTimingPlugin"
MERLINA_PLUGIN = "merlina_orpo_plugin.MerlinaORPOPlugin"
FIXED = dict(gradient_accumulation_steps=1, num_epochs=1, optimizer="adamw_torch", lr_scheduler="constant",
             weight_decay=0.0, max_grad_norm=1.0, fp16=False, tf32=False, attn_implementation="sdpa",
             lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False, sample_packing=False,
             gradient_checkpointing=False, val_set_size=0.0, shuffle_merged_datasets=False, logging_steps=1000,
             save_strategy="no", dataloader_num_workers=0, dataloader_pin_memory=False)


def write_config(job: dict, **cfg) -> Path:
    """``<work_dir>/config.yml``: the Axolotl recipe of ``job["impl"]``, or `FIXED` and ``cfg``."""
    import yaml

    work = Path(job["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    entry = {"path": job.get("data_path"), "ds_type": "json", "split": "train"}
    if job.get("impl", "").startswith("axolotl"):
        cfg = dict(base_model=job["model_dir"], orpo_alpha=job["beta"], sequence_len=job["max_length"],
                   micro_batch_size=job["micro_batch"], max_steps=job["warmup"] + job["steps"],
                   learning_rate=job["learning_rate"], bf16=job["device"] == "cuda", seed=job["seed"],
                   plugins=[TIMING_PLUGIN], rl="orpo", datasets=[entry])
        if job["impl"] == "axolotl_merlina":
            cfg.update(plugins=[MERLINA_PLUGIN, TIMING_PLUGIN], rl="orpo_standalone",
                       datasets=[{**entry, "type": "prompt_pairs"}])
    cfg = dict(FIXED, output_dir=str(work / "out"), dataset_prepared_path=str(work / "prepared"), **cfg)
    path = work / "config.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cpu_threads() -> int:
    """Threads every child trains with: ``OMP_NUM_THREADS`` if set, else PyTorch's default here."""
    import torch

    return int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())


OFFLINE = dict(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled",
               AXOLOTL_DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false", TRL_EXPERIMENTAL_SILENCE="1")


def child_env(job_path: Path | None, device: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, **OFFLINE, PYTHONUNBUFFERED="1", PATH=PATH,
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p), **extra)
    if job_path is not None:
        env["MERLINA_BENCH_JOB"] = str(job_path)
    env.setdefault("OMP_NUM_THREADS", str(cpu_threads()))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def spawn(job: dict, timeout: int, command: list[str] | None = None, **env: str) -> dict:
    """``job`` in a fresh process (``--job``, or ``command``): its result, else ``error`` and ``log_tail``."""
    work = Path(job["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    job_path, log_path, result_path = work / "job.json", work / "log.txt", Path(job["result_path"])
    job_path.write_text(json.dumps(job, indent=1))
    command = command or [sys.executable, "-m", "benchmarks", job["subcommand"], "--job", str(job_path)]
    try:
        with log_path.open("w") as log:
            code = subprocess.run(command, cwd=work, env=child_env(job_path, job["device"], **env), stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        code = f"timeout after {timeout}s"
    if code == 0 and result_path.exists():
        return json.loads(result_path.read_text())
    tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
    return {"error": f"exit {code}" + ("; no result" if code == 0 else ""), "log_tail": tail}


def run(impl: Impl, job: dict, timeout: int, inline: bool = False) -> dict:
    """Run one training configuration; its measurement, or ``{"error": ..., "log_tail": ...}``."""
    job = {**job, "impl": impl.name, "subcommand": "train", "result_path": str(Path(job["work_dir"]) / "result.json")}
    loads, start = {"loadavg_before": os.getloadavg()[0]}, time.perf_counter()
    if inline and impl.kind == "python":
        from .trainers import run_job

        Path(job["work_dir"]).mkdir(parents=True, exist_ok=True)
        try:
            result = {**run_job(job), "isolation": "inline"}
        except Exception:
            result = {"error": "exception", "log_tail": traceback.format_exc()[-4000:]}
    else:  # `axolotl` resolves on the child's PATH, this venv's first
        result = spawn(job, timeout, ["axolotl", "train", str(write_config(job))] if impl.kind == "axolotl" else None)
        result = result if "error" in result else {**result, "isolation": "process"}
    return {**result, "process_seconds": time.perf_counter() - start, **loads}
