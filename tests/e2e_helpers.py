"""Driving the real `axolotl` CLI in tests: a tiny local model, a YAML writer, a runner.

The model is a 2-layer Llama built from a config with the real SmolLM2 tokenizer beside it, so
Axolotl loads it exactly like a downloaded checkpoint. Runs are offline (the environment of
testkit.py, inherited), on CPU, with W&B offline.
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

from testkit import QUANTIZABLE_SIZES, seq2seq_tokenizer, smollm2_dir, tiny_llama, tiny_t5

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


def tiny_model_dir(path: Path, architecture: str = "llama", **overrides) -> Path:
    """A saved 2-layer Llama (or Mistral) with the real SmolLM2 tokenizer files beside it.

    Its linear sizes are multiples of 128 (`QUANTIZABLE_SIZES`), so the QLoRA runs evaluate on every CPU.
    """
    tokenizer_dir = smollm2_dir()
    if not (path / "config.json").exists():
        params = dict(QUANTIZABLE_SIZES, tie_word_embeddings=True)
        params.update(overrides)
        if architecture == "mistral":
            import torch
            from transformers import MistralConfig, MistralForCausalLM

            config = MistralConfig(**{**tiny_llama().config.to_dict(), **params, "model_type": "mistral"})
            torch.manual_seed(0)
            MistralForCausalLM(config).save_pretrained(path)
        else:
            tiny_llama(seed=0, **params).save_pretrained(path)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(tokenizer_dir / name, path / name)
    return path


def tiny_t5_dir(path: Path) -> Path:
    """A saved 2-layer T5 with SmolLM2's vocabulary and a T5-style tokenizer (`text <|im_end|>`) beside it."""
    if not (path / "config.json").exists():
        tiny_t5().save_pretrained(path)
        seq2seq_tokenizer().save_pretrained(path)
    return path


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
