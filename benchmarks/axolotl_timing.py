"""Axolotl plugin: a `StepTimer` and sequential sampling in ``axolotl train`` if ``$MERLINA_BENCH_JOB`` names a job."""

import json
import os
from pathlib import Path

from axolotl.integrations.base import BasePlugin

from .measure import StepTimer


class BenchTimingPlugin(BasePlugin):
    def __init__(self):
        super().__init__()
        path = os.environ.get("MERLINA_BENCH_JOB")
        self.job = job = json.loads(Path(path).read_text()) if path else None
        self.timer = job and StepTimer(job["warmup"], job["steps"], job["result_path"], extra={"impl": job["impl"]})

    def get_training_args(self, cfg):  # both trainer builders apply it last (TRL's ignores curriculum_sampling)
        return None if self.job is None else {"train_sampling_strategy": "sequential"}

    def add_callbacks_pre_trainer(self, cfg, model):
        return [] if self.timer is None else [self.timer]

    def add_callbacks_post_trainer(self, cfg, trainer):
        if self.timer is not None:
            self.timer.attach(trainer, self.job["micro_batch"])
        return []
