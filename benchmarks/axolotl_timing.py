"""Axolotl plugin: inside ``axolotl train``, the job file ``$MERLINA_BENCH_JOB`` names a `StepTimer` and a
sequential sampler (without it, it does nothing)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from axolotl.integrations.base import BasePlugin

from .measure import StepTimer


class BenchTimingPlugin(BasePlugin):
    def __init__(self):
        super().__init__()
        path = os.environ.get("MERLINA_BENCH_JOB")
        self.job, self.timer = json.loads(Path(path).read_text()) if path else None, None

    def get_training_args(self, cfg):  # both trainer builders apply it last (TRL's ignores curriculum_sampling)
        return None if self.job is None else {"train_sampling_strategy": "sequential"}

    def add_callbacks_pre_trainer(self, cfg, model):
        if self.job is None:
            return []
        self.timer = StepTimer(self.job["warmup"], self.job["steps"], self.job["result_path"],
                               extra={"impl": self.job["impl"]})
        return [self.timer]

    def add_callbacks_post_trainer(self, cfg, trainer):
        if self.timer is not None:
            self.timer.attach(trainer, self.job["micro_batch"])
        return []
