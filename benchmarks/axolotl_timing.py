"""Axolotl plugin that times training inside the process `axolotl train` launches.

List it under ``plugins:`` (``benchmarks.axolotl_timing.BenchTimingPlugin``, with the repo root on
PYTHONPATH). It reads the job file named by ``MERLINA_BENCH_JOB``; without that variable it does
nothing. It adds a `benchmarks.measure.StepTimer` and makes the sampler sequential, so every
implementation trains on the same rows in the same order (Axolotl's own shuffle is turned off in
the YAML with ``shuffle_merged_datasets: false``).
"""

from __future__ import annotations

import json
import os

from axolotl.integrations.base import BasePlugin

JOB_ENV = "MERLINA_BENCH_JOB"


def _job() -> dict | None:
    path = os.environ.get(JOB_ENV)
    return json.loads(open(path).read()) if path else None


class BenchTimingPlugin(BasePlugin):
    def __init__(self):
        super().__init__()
        self.timer = None

    def get_training_args(self, cfg):
        if _job() is None:
            return None
        # Applied last by both trainer builders: a sequential sampler for the built-in `rl: orpo`
        # trainer (TRL's, which ignores `curriculum_sampling`) and for the plugin's trainer.
        return {"train_sampling_strategy": "sequential"}

    def add_callbacks_pre_trainer(self, cfg, model):
        job = _job()
        if job is None:
            return []
        from .measure import StepTimer

        self.timer = StepTimer(job["warmup"], job["steps"], job["result_path"], extra={"impl": job["impl"]})
        return [self.timer]

    def add_callbacks_post_trainer(self, cfg, trainer):
        if self.timer is not None:
            job = _job()
            self.timer.attach(trainer, job["micro_batch"])
        return []
