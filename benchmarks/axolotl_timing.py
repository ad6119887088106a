"""The two Axolotl CLI runs: their YAML (`write_config`) and the plugin that times training inside the
process ``axolotl train`` launches (`BenchTimingPlugin`).

Both recipes read the same JSONL of plain ``prompt``/``chosen``/``rejected`` strings, no chat template:
built-in ``rl: orpo`` gets the entry with no ``type`` (Axolotl hands the rows to TRL's trainer as they
are), ours ``type: prompt_pairs`` (Axolotl's only ORPO type, ``chat_template.argilla``, would render a
template). The plugin (listed under ``plugins:``, repository root on PYTHONPATH) reads the job file named
by ``MERLINA_BENCH_JOB`` (without it, it does nothing), adds a `measure.StepTimer` and makes the sampler
sequential, so every implementation trains on the same rows in the same order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from axolotl.integrations.base import BasePlugin

JOB_ENV = "MERLINA_BENCH_JOB"
TIMING_PLUGIN = "benchmarks.axolotl_timing.BenchTimingPlugin"
MERLINA_PLUGIN = "merlina_orpo_plugin.MerlinaORPOPlugin"
#: the YAML both recipes share, beside what `base_config` reads from the job
FIXED = dict(gradient_accumulation_steps=1, num_epochs=1, optimizer="adamw_torch", lr_scheduler="constant",
             weight_decay=0.0, max_grad_norm=1.0, fp16=False, tf32=False, attn_implementation="sdpa",
             lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False, sample_packing=False,
             gradient_checkpointing=False, val_set_size=0.0, shuffle_merged_datasets=False, logging_steps=1000,
             save_strategy="no", dataloader_num_workers=0, dataloader_pin_memory=False)


def base_config(job: dict) -> dict:
    work = Path(job["work_dir"])
    return dict(FIXED, base_model=job["model_dir"], orpo_alpha=job["beta"], sequence_len=job["max_length"],
                micro_batch_size=job["micro_batch"], max_steps=job["warmup"] + job["steps"],
                learning_rate=job["learning_rate"], bf16=job["device"] == "cuda", seed=job["seed"],
                output_dir=str(work / "out"), dataset_prepared_path=str(work / "prepared"))


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


def _job() -> dict | None:
    path = os.environ.get(JOB_ENV)
    return json.loads(Path(path).read_text()) if path else None


class BenchTimingPlugin(BasePlugin):
    def __init__(self):
        super().__init__()
        self.timer = None

    def get_training_args(self, cfg):
        # applied last by both trainer builders: a sequential sampler for the built-in `rl: orpo` trainer
        # (TRL's, which ignores `curriculum_sampling`) and for the plugin's trainer
        return None if _job() is None else {"train_sampling_strategy": "sequential"}

    def add_callbacks_pre_trainer(self, cfg, model):
        job = _job()
        if job is None:
            return []
        from .measure import StepTimer

        self.timer = StepTimer(job["warmup"], job["steps"], job["result_path"], extra={"impl": job["impl"]})
        return [self.timer]

    def add_callbacks_post_trainer(self, cfg, trainer):
        if self.timer is not None:
            self.timer.attach(trainer, _job()["micro_batch"])
        return []
