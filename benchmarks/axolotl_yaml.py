"""Axolotl recipes for the two CLI runs: built-in `rl: orpo` and `rl: orpo_standalone` (ours).

Both read the same JSONL of plain ``prompt``/``chosen``/``rejected`` strings, with no chat template:
the built-in run gives the entry no ``type`` (Axolotl then hands the rows to TRL's ORPOTrainer as
they are, and TRL tokenises prompt and prompt + answer itself), ours uses ``type: prompt_pairs``.
Axolotl's only ORPO type, ``chat_template.argilla``, needs message lists and would render a chat
template, so it is not used.
"""

from __future__ import annotations

from pathlib import Path

import yaml

TIMING_PLUGIN = "benchmarks.axolotl_timing.BenchTimingPlugin"
MERLINA_PLUGIN = "merlina_orpo_plugin.MerlinaORPOPlugin"


def base_config(job: dict) -> dict:
    cuda = job["device"] == "cuda"
    work = Path(job["work_dir"])
    return {
        "base_model": job["model_dir"],
        "orpo_alpha": job["beta"],
        "sequence_len": job["max_length"],
        "micro_batch_size": job["micro_batch"],
        "gradient_accumulation_steps": 1,
        "max_steps": job["warmup"] + job["steps"],
        "num_epochs": 1,
        "learning_rate": job["learning_rate"],
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "bf16": cuda,
        "fp16": False,
        "tf32": False,
        "attn_implementation": "sdpa",
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "sample_packing": False,
        "gradient_checkpointing": False,
        "val_set_size": 0.0,
        "shuffle_merged_datasets": False,
        "logging_steps": 1000,
        "save_strategy": "no",
        "seed": job["seed"],
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "output_dir": str(work / "out"),
        "dataset_prepared_path": str(work / "prepared"),
    }


def write_config(job: dict) -> Path:
    cfg = base_config(job)
    entry = {"path": job["data_path"], "ds_type": "json", "split": "train"}
    if job["impl"] == "axolotl_orpo":
        cfg.update(plugins=[TIMING_PLUGIN], rl="orpo", datasets=[entry])
    elif job["impl"] == "axolotl_merlina":
        cfg.update(plugins=[MERLINA_PLUGIN, TIMING_PLUGIN], rl="orpo_standalone",
                   datasets=[{**entry, "type": "prompt_pairs"}])
        cfg.update(job.get("merlina_yaml") or {})
    else:
        raise ValueError(f"not an Axolotl implementation: {job['impl']}")
    path = Path(job["work_dir"]) / "config.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
