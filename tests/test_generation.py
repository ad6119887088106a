"""Generations at evaluation: the trainer samples fixed eval prompts and writes them where users look.

A real `MerlinaORPOTrainer.train()` with evaluation every 2 steps and TensorBoard on: the JSONL in
`output_dir` holds one row per prompt per evaluation with the pair and the sample, the sample's
mean log-prob is a real log-prob, and TensorBoard's event file has the table as text. (W&B's table
is checked through Axolotl, offline, in test_axolotl_e2e.py.)
"""

from __future__ import annotations

import math

from datasets import Dataset

from testkit import generation_rows, orpo_args, tiny_llama
from merlina_orpo_plugin import MerlinaORPOTrainer
from merlina_orpo_plugin.generation import COLUMNS


def _pairs(n: int) -> Dataset:
    return Dataset.from_list([
        {"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f" {2 * i}.", "rejected": f" Perhaps {i + 1}."}
        for i in range(n)
    ])


def test_each_evaluation_samples_the_same_prompts_and_logs_them(tmp_path, tokenizer, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = orpo_args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2, report_to=["tensorboard"],
                     generate_during_eval=True, num_generation_samples=3,
                     generation_max_new_tokens=6)
    trainer = MerlinaORPOTrainer(tiny_llama(), args, train_dataset=_pairs(8), eval_dataset=_pairs(5),
                                 processing_class=tokenizer)
    trainer.train()

    rows = generation_rows(tmp_path)
    assert [row["step"] for row in rows] == [2, 2, 2, 4, 4, 4]
    assert all(set(row) == set(COLUMNS) for row in rows)
    assert [row["prompt"] for row in rows[:3]] == [row["prompt"] for row in rows[3:]]  # fixed prompts
    assert "Question 0" in rows[0]["prompt"] and rows[0]["chosen"].startswith(" 0.")
    for row in rows:
        assert row["sample"] and math.isfinite(row["sample_mean_logp"]) and row["sample_mean_logp"] < 0

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    texts = events.Tensors("eval/generations/text_summary")
    assert [event.step for event in texts] == [2, 4]
    assert "sample_mean_logp" in texts[0].tensor_proto.string_val[0].decode()
