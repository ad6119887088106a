"""The Axolotl plugin that times training inside the process ``axolotl train`` launches (its YAML:
`impls.write_config`). Listed under ``plugins:`` (repository root on PYTHONPATH), it reads the job file
named by ``MERLINA_BENCH_JOB`` (without it, it does nothing), adds a `measure.StepTimer` and makes the
sampler sequential, so every implementation trains on the same rows in the same order."""

from __future__ import annotations

import json
import os
from pathlib import Path

from axolotl.integrations.base import BasePlugin

from .measure import StepTimer

JOB_ENV = "MERLINA_BENCH_JOB"


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
        self.timer = StepTimer(job["warmup"], job["steps"], job["result_path"], extra={"impl": job["impl"]})
        return [self.timer]

    def add_callbacks_post_trainer(self, cfg, trainer):
        if self.timer is not None:
            self.timer.attach(trainer, _job()["micro_batch"])
        return []
