"""Driving the real `axolotl` CLI in tests: the CPU base of a recipe, a YAML writer, a runner.

The models are testkit's saved tiny ones (`tiny_model_dir`), which Axolotl loads exactly like a
downloaded checkpoint. Runs are offline (the environment testkit.py sets, inherited), on CPU, with
W&B offline, and can go in the background beside each other (`CliRun`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


VENV_BIN = Path(sys.executable).parent

#: What every CPU test recipe needs (Axolotl's CUDA-only defaults off).
CPU_BASE = {
    "plugins": ["merlina_orpo_plugin.MerlinaORPOPlugin"],
    "rl": "orpo_standalone",
    "orpo_alpha": 0.1,
    "sequence_len": 256,
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_steps": 3,
    "num_epochs": 1,
    "learning_rate": 1e-3,
    "optimizer": "adamw_torch",
    "lr_scheduler": "constant",
    "adapter": "lora",
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "lora_target_modules": ["q_proj", "v_proj"],
    "lora_mlp_kernel": False,
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
    "bf16": False,
    "fp16": False,
    "tf32": False,
    "attn_implementation": "sdpa",
    "logging_steps": 1,
    "save_strategy": "no",
    "seed": 7,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": False,
}


def write_config(directory: Path, model_dir: Path, datasets: list[dict], **overrides) -> Path:
    cfg = dict(CPU_BASE)
    cfg.update(
        base_model=str(model_dir),
        datasets=datasets,
        output_dir=str(directory / "out"),
        dataset_prepared_path=str(directory / "prepared"),
    )
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path = directory / "config.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def axolotl_env(**extra: str) -> dict[str, str]:
    """This process's (offline) environment, the venv first on PATH, no GPU."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONUNBUFFERED": "1", **extra}


class CliRun:
    """A command started in the background (its own process group); `result()` waits for it.

    Most of an `axolotl` run on CPU is importing Python: two runs side by side take little more
    than one. Output goes to temporary files, so a chatty run never blocks on a full pipe.
    """

    def __init__(self, args: list[str], cwd: Path, timeout: int = 600, **env: str):
        self.args = args
        self.deadline = time.monotonic() + timeout
        command = [str(VENV_BIN / args[0]), *args[1:]] if (VENV_BIN / args[0]).exists() else args
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(command, cwd=cwd, env=axolotl_env(**env), stdout=self.out, stderr=self.err,
                                        text=True, start_new_session=True)

    def result(self, check: bool = True) -> subprocess.CompletedProcess:
        """Wait for the command (ending it at its deadline); with ``check``, fail on a non-zero exit."""
        try:
            self.process.wait(timeout=max(1.0, self.deadline - time.monotonic()))
            ended = "exited"
        except subprocess.TimeoutExpired:
            self.stop()
            ended = "ran past its timeout and was killed, code"
        outputs = []
        for handle in (self.out, self.err):
            handle.seek(0)
            outputs.append(handle.read())
        result = subprocess.CompletedProcess(self.args, self.process.returncode, *outputs)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(self.args)} {ended} {result.returncode}\n--- stdout (tail) ---\n{result.stdout[-6000:]}"
                f"\n--- stderr (tail) ---\n{result.stderr[-8000:]}"
            )
        return result

    def stop(self) -> None:
        """End the command and every process it started (torchrun's ranks, accelerate's child)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def run_cli(args: list[str], cwd: Path, timeout: int = 600, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run a command (e.g. ``["axolotl", "train", "config.yml"]``) with the venv first on PATH."""
    return CliRun(args, cwd, timeout, **env).result(check)


def hide_entry_points(directory: Path, group: str, distribution: str = "merlina-orpo-plugin") -> dict[str, str]:
    """The environment of a subprocess in which ``distribution`` declares no ``group`` entry point (tests only).

    A copy of the distribution's installed metadata (its ``.dist-info``) without that group goes on
    PYTHONPATH, which comes before site-packages; importlib.metadata reads the first copy of a
    distribution on the path, so the group loses the entry point while the package still imports from
    where it is installed. Nothing installed is touched; `CliRun(..., **env)` passes it on. Only the
    current directory comes earlier on a subprocess's path: run it elsewhere than the checkout, whose
    `*.egg-info` (left by an editable install) is a copy of the metadata too.
    """
    from importlib.metadata import distributions

    for installed in distributions(name=distribution):  # the .dist-info one; a checkout's .egg-info lacks METADATA
        metadata = next((path for path in installed.files or () if path.name == "METADATA"), None)
        if metadata is not None:
            break
    else:
        raise AssertionError(f"{distribution} has no installed .dist-info")
    source = Path(metadata.locate()).parent
    target = directory / "metadata" / source.name
    shutil.copytree(source, target)
    kept, skipping = [], False
    for line in (target / "entry_points.txt").read_text().splitlines():
        if line.startswith("["):
            skipping = line.strip() == f"[{group}]"
        if not skipping:
            kept.append(line)
    (target / "entry_points.txt").write_text("\n".join(kept) + "\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(target.parent), os.environ.get("PYTHONPATH")]))}


def log_history(output_dir: Path) -> list[dict]:
    """The trainer's log history from the last checkpoint's trainer_state.json under ``output_dir``."""
    import json

    candidates = sorted(Path(output_dir).rglob("trainer_state.json"))
    assert candidates, f"no trainer_state.json under {output_dir}"
    return json.loads(candidates[-1].read_text())["log_history"]
