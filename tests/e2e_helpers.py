"""Driving the real `axolotl` CLI in tests: a tiny local model, a YAML writer, a runner.

The model is a 2-layer Llama built from a config with the real SmolLM2 tokenizer beside it, so
Axolotl loads it exactly like a downloaded checkpoint. Runs are offline, on CPU, with W&B offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import QUANTIZABLE_SIZES, REPO, shared_path, smollm2_dir, tiny_llama

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
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE=env.get("WANDB_MODE", "disabled"),
        AXOLOTL_DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, timeout: int = 600, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run a command (e.g. ``["axolotl", "train", "config.yml"]``) with the venv first on PATH."""
    command = [str(VENV_BIN / args[0]), *args[1:]] if (VENV_BIN / args[0]).exists() else args
    result = subprocess.run(
        command, cwd=cwd, env=axolotl_env(**env), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n--- stdout (tail) ---\n{result.stdout[-6000:]}"
            f"\n--- stderr (tail) ---\n{result.stderr[-8000:]}"
        )
    return result


def llamafactory_file() -> Path:
    return shared_path("llamafactory-dpo-demo", "dpo_en_demo.json")


def repo_path(*parts: str) -> Path:
    return REPO.joinpath(*parts)
