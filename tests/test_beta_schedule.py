"""Beta schedules in the trainer: the logged beta follows `schedules.beta_at` step by step, across a
resume from a checkpoint, and `evaluate()` uses the current value; a constant schedule (named, or a
linear one with `beta_end` = `beta`) is today's run."""

from __future__ import annotations

import pytest
from datasets import Dataset

from testkit import orpo_args, tiny_llama
from merlina_orpo_plugin import MerlinaORPOTrainer
from merlina_orpo_plugin.schedules import beta_at

LINEAR = dict(beta=0.2, beta_schedule="linear", beta_end=0.6, beta_warmup_steps=1)


def _pairs() -> Dataset:
    words = ["red", "blue", "green", "small", "large", "quick", "slow", "bright", "dark", "warm"]
    return Dataset.from_list([
        {"prompt": f"Describe the {words[i]} {words[-1 - i]} thing:", "chosen": f" It is {words[(i + 3) % 10]}.",
         "rejected": f" Maybe {words[(i + 5) % 10]}, maybe not, who knows {words[i]}."}
        for i in range(8)
    ])


def _train(tmp_path, tokenizer, steps=4, resume=None, **options):
    args = orpo_args(tmp_path, max_steps=steps, save_strategy="steps", save_steps=2, per_device_train_batch_size=2,
                     **options)
    trainer = MerlinaORPOTrainer(tiny_llama(seed=0), args, train_dataset=_pairs(), eval_dataset=_pairs(),
                                 processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, {log["step"]: log for log in trainer.state.log_history if "loss" in log}


def test_logged_beta_follows_the_formula_and_a_resume_continues_it(tmp_path, tokenizer):
    trainer, logs = _train(tmp_path / "run", tokenizer, **LINEAR)
    for step, log in logs.items():  # the log after optimizer step k holds the beta that step's loss used
        expected = beta_at(step - 1, 4, beta=0.2, beta_end=0.6, schedule="linear", warmup_steps=1)
        assert log["beta"] == pytest.approx(expected, rel=1e-6), step
    assert [round(logs[s]["beta"], 6) for s in (1, 2, 3, 4)] == [0.0, 0.2, 0.333333, 0.466667]
    evaluated = trainer.evaluate()
    assert evaluated["eval_beta"] == pytest.approx(0.6)  # after 4 of 4 steps the schedule is at its end

    _, resumed = _train(tmp_path / "run", tokenizer, resume=str(tmp_path / "run" / "checkpoint-2"), **LINEAR)
    for step in (3, 4):
        assert resumed[step]["beta"] == pytest.approx(logs[step]["beta"], rel=1e-6)
        assert resumed[step]["loss"] == pytest.approx(logs[step]["loss"], rel=1e-5)


@pytest.mark.parametrize("schedule", [
    dict(beta_schedule="constant"),  # named explicitly: not scheduled, so beta is not logged
    dict(beta_schedule="linear", beta_end=0.3),  # scheduled, logged, and flat
], ids=lambda schedule: schedule["beta_schedule"])
def test_a_schedule_that_never_moves_trains_exactly_as_a_fixed_beta(tmp_path, tokenizer, schedule):
    _, fixed = _train(tmp_path / "fixed", tokenizer, beta=0.3)
    _, flat = _train(tmp_path / "flat", tokenizer, beta=0.3, **schedule)
    assert "beta" not in fixed[1]
    if schedule["beta_schedule"] == "constant":
        assert "beta" not in flat[1]
    else:
        assert flat[1]["beta"] == pytest.approx(0.3)
    assert [fixed[s]["loss"] for s in fixed] == [flat[s]["loss"] for s in flat]
