"""The implementations compared, whether each can run here, and how one configuration is launched:
each in its own fresh process, so peak memory is per configuration."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .workload import REPO

VENV_BIN = Path(sys.executable).parent
#: ORPOConfig kwargs that turn our speed features off (variant "merlina_nospeed").
SPEED_OFF = {"prefix_sharing": False, "padding_free": False, "loss_chunk_size": 0}


@dataclass(frozen=True)
class Impl:
    name: str
    letter: str
    label: str
    kind: str  # "axolotl" (the real `axolotl train` CLI) or "direct" (Python, `benchmarks.direct`)
    requires: tuple[str, ...]


IMPLS = {
    i.name: i
    for i in (
        Impl("axolotl_orpo", "a", "Axolotl `rl: orpo` (TRL 1.9)", "axolotl", ("axolotl", "trl")),
        Impl("axolotl_merlina", "b", "Axolotl `rl: orpo_standalone` (ours)", "axolotl", ("axolotl",)),
        Impl("trl", "c", "TRL `ORPOTrainer` direct", "direct", ("trl",)),
        Impl("merlina", "d", "ours direct", "direct", ()),
        Impl("merlina_nospeed", "e", "ours direct, speed features off", "direct", ()),
    )
}
BASELINES = ("trl", "axolotl_orpo")


def missing_speed_fields() -> list[str]:
    from merlina_orpo_plugin import ORPOConfig

    names = {f.name for f in dataclasses.fields(ORPOConfig)}
    return [k for k in SPEED_OFF if k not in names]


def skip_reason(impl: Impl, device: str) -> str | None:
    """Why ``impl`` cannot run in this environment, or None."""
    for module in impl.requires:
        if importlib.util.find_spec(module) is None:
            return f"`{module}` is not installed"
    if impl.kind == "axolotl":
        if shutil.which("axolotl", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}") is None:
            return "the `axolotl` command is not on PATH"
    if impl.name == "merlina_nospeed" and missing_speed_fields():
        return f"ORPOConfig has no {', '.join(missing_speed_fields())} yet"
    return None


def cpu_threads() -> int:
    """Threads every child trains with: ``OMP_NUM_THREADS`` if set, else PyTorch's default here."""
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    import torch

    return torch.get_num_threads()


def child_env(job_path: Path | None, device: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        AXOLOTL_DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        TRL_EXPERIMENTAL_SILENCE="1",
    )
    if job_path is not None:
        env["MERLINA_BENCH_JOB"] = str(job_path)
    # `accelerate launch` (which `axolotl train` runs) sets OMP_NUM_THREADS=1 on CPU when it is unset,
    # so the Axolotl runs would train on one thread and the direct ones on all: pin one count for all.
    env.setdefault("OMP_NUM_THREADS", str(cpu_threads()))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def command(impl: Impl, job: dict, job_path: Path) -> list[str]:
    if impl.kind == "axolotl":
        from .axolotl_yaml import write_config

        return [str(VENV_BIN / "axolotl") if (VENV_BIN / "axolotl").exists() else "axolotl",
                "train", str(write_config(job))]
    return [sys.executable, "-m", "benchmarks.direct", str(job_path)]


def run(impl: Impl, job: dict, timeout: int) -> dict:
    """Run one configuration in a fresh process; the measurement JSON, or ``{"error": ...}``."""
    work = Path(job["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    job = {**job, "impl": impl.name, "result_path": str(work / "result.json")}
    if impl.name == "merlina_nospeed":
        job["merlina_kwargs"] = SPEED_OFF
    job_path = work / "job.json"
    job_path.write_text(json.dumps(job, indent=1))
    log_path = work / "log.txt"
    load_before = list(os.getloadavg())
    start = time.perf_counter()
    try:
        cmd = command(impl, job, job_path)
        with log_path.open("w") as log:
            proc = subprocess.run(cmd, cwd=work, env=child_env(job_path, job["device"]), stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        returncode = f"timeout after {timeout}s"
    wall = time.perf_counter() - start
    loads = {"loadavg_before": load_before, "loadavg_after": list(os.getloadavg())}
    result_path = Path(job["result_path"])
    if returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
        return {"impl": impl.name, "error": f"exit {returncode}; no result" if returncode == 0 else f"exit {returncode}",
                "log": str(log_path), "log_tail": tail, "process_seconds": wall, **loads}
    result = json.loads(result_path.read_text())
    result.update(process_seconds=wall, log=str(log_path), command=" ".join(cmd), **loads)
    return result
