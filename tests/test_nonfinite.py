"""A NaN or Inf in training is never hidden (`merlina_orpo_plugin.nonfinite`): checked against the run itself.

transformers' `logging_nan_inf_filter` makes an all-NaN run log ``loss`` 0.0. Here a NaN weight, a NaN
beta at one step, or an infinite gradient at one step must either stop the run with the step, the rows of
the batch and the loss terms, before the optimizer moves a weight (``stop``, the default), or skip exactly
that optimizer step, weights and optimizer state untouched, with the skip counted in the log and no finite
``loss`` logged for a window in which nothing trained (``skip``). Last, the same through `axolotl train`.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from testkit import orpo_args, single_turn_pairs, tiny_llama, tiny_model_dir
from merlina_orpo_plugin import MerlinaORPOTrainer


@pytest.fixture(scope="module")
def pairs():
    return Dataset.from_list(single_turn_pairs(8))


def _trainer(tmp_path, tokenizer, pairs, model=None, **overrides):
    args = orpo_args(tmp_path, max_steps=4, **overrides)
    return MerlinaORPOTrainer(model=model or tiny_llama(seed=1), args=args, train_dataset=pairs,
                              processing_class=tokenizer)


class AtStep(TrainerCallback):
    """Runs ``action(trainer, undo)`` when optimizer step ``step`` (1-based) begins, ``undo`` after it."""

    def __init__(self, trainer, step, action):
        self.trainer, self.step, self.action, self.snapshots = trainer, step, action, {}
        self.undo = None

    def _weights(self):
        return {n: p.detach().clone() for n, p in self.trainer.model.named_parameters()}

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            self.snapshots["before"] = self._weights()
            self.undo = self.action(self.trainer)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.snapshots["after"] = self._weights()
            if self.undo:
                self.undo()


def _nan_beta(trainer):
    """A NaN beta for one step: the odds-ratio term, the loss and every gradient become NaN."""
    beta, trainer.beta = trainer.beta, float("nan")
    return lambda: setattr(trainer, "beta", beta)


def _infinite_gradient(trainer):
    """An infinite gradient on one weight for one step, the loss left finite."""
    weight = next(p for n, p in trainer.model.named_parameters() if "q_proj" in n)
    handle = weight.register_hook(lambda grad: grad * float("inf"))
    return handle.remove


def test_a_nan_weight_stops_at_step_1_naming_rows_and_terms_before_any_weight_moves(tmp_path, tokenizer, pairs):
    model = tiny_llama(seed=1)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    trainer = _trainer(tmp_path, tokenizer, pairs, model=model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(FloatingPointError) as raised:
        trainer.train()
    message = str(raised.value)
    assert "non-finite training loss at optimizer step 1: loss nan, nll_loss nan, or_loss nan" in message
    rows = message.split("rows ", 1)[1].split(" of the training dataset", 1)[0]
    assert len(rows.split(", ")) == 2 and all(0 <= int(row) < len(pairs) for row in rows.split(", "))
    first = int(rows.split(", ")[0])
    prompt = tokenizer.decode(trainer.train_dataset[first]["prompt_input_ids"][:32])
    assert f"{first}: {prompt[:48] + ('…' if len(prompt) > 48 else '')!r}" in message
    assert "merlina_on_nonfinite" in message
    for name, value in model.named_parameters():  # the optimizer never stepped
        assert torch.equal(value, before[name]) or torch.isnan(before[name]).any(), name
    assert not [log for log in trainer.state.log_history if "loss" in log]


def test_a_nan_loss_at_step_3_stops_there(tmp_path, tokenizer, pairs):
    trainer = _trainer(tmp_path, tokenizer, pairs)
    trainer.add_callback(AtStep(trainer, 3, _nan_beta))
    with pytest.raises(FloatingPointError, match=r"at optimizer step 3: loss nan, nll_loss [-0-9.e]+, or_loss nan"):
        trainer.train()
    assert [round(log["step"]) for log in trainer.state.log_history if "loss" in log] == [1, 2]


def test_an_infinite_gradient_with_a_finite_loss_stops_before_the_optimizer_steps(tmp_path, tokenizer, pairs):
    trainer = _trainer(tmp_path, tokenizer, pairs)
    watch = AtStep(trainer, 2, _infinite_gradient)
    trainer.add_callback(watch)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm \((inf|nan)\) at optimizer step 2 with a "
                                                 r"finite loss; rows \d+, \d+ of the training dataset"):
        trainer.train()
    now = {n: p.detach() for n, p in trainer.model.named_parameters()}
    assert all(torch.equal(now[n], value) for n, value in watch.snapshots["before"].items())


@pytest.mark.parametrize("fault", [_nan_beta, _infinite_gradient], ids=["nan-loss", "inf-gradient"])
def test_skip_leaves_the_weights_and_optimizer_of_that_step_alone_and_counts_it(tmp_path, tokenizer, pairs, fault):
    trainer = _trainer(tmp_path, tokenizer, pairs, on_nonfinite="skip")
    watch = AtStep(trainer, 3, fault)
    trainer.add_callback(watch)
    trainer.train()
    before, after = watch.snapshots["before"], watch.snapshots["after"]
    assert all(torch.equal(after[n], value) for n, value in before.items())  # step 3 moved nothing
    moved = {n: p.detach() for n, p in trainer.model.named_parameters()}
    assert any(not torch.equal(moved[n], value) for n, value in after.items())  # step 4 trained again
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["nonfinite_skipped_steps"] for log in logs] == [0, 0, 1, 1]
    assert math.isnan(logs[2]["loss"])  # nothing trained in that window: no finite stand-in
    assert all(math.isfinite(log["loss"]) for i, log in enumerate(logs) if i != 2)


def test_skip_logs_the_mean_over_the_steps_that_trained(tmp_path, tokenizer, pairs):
    """Logging every 2 steps, step 3 skipped: the second log is step 4's loss alone, not (0 + loss4) / 2."""
    clean = _trainer(tmp_path / "clean", tokenizer, pairs, on_nonfinite="skip", logging_steps=1)
    clean.add_callback(AtStep(clean, 3, _nan_beta))
    clean.train()
    per_step = [log["loss"] for log in clean.state.log_history if "loss" in log]
    trainer = _trainer(tmp_path / "two", tokenizer, pairs, on_nonfinite="skip", logging_steps=2)
    trainer.add_callback(AtStep(trainer, 3, _nan_beta))
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["nonfinite_skipped_steps"] for log in logs] == [0, 1]
    assert logs[0]["loss"] == pytest.approx((per_step[0] + per_step[1]) / 2, abs=1e-4)
    assert logs[1]["loss"] == pytest.approx(per_step[3], abs=1e-4)


def test_the_option_is_checked_like_every_other(tmp_path):
    with pytest.raises(ValueError, match=r"`on_nonfinite` \(YAML: `merlina_on_nonfinite`\) must be one of stop, skip"):
        orpo_args(tmp_path, on_nonfinite="ignore")


@pytest.mark.needs("axolotl")
def test_axolotl_train_stops_on_a_nan_weight_and_skips_with_the_yaml_option(tmp_path):
    from e2e_helpers import CliRun, log_history, write_config
    from testkit import pairs_path

    model_dir = tiny_model_dir(tmp_path / "model")
    import safetensors.torch as st

    weights = st.load_file(model_dir / "model.safetensors")
    name = next(n for n in weights if n.endswith("layers.0.mlp.down_proj.weight"))
    weights[name][0, 0] = float("nan")
    st.save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    data = [{"path": str(pairs_path("orca_dpo_pairs.jsonl")), "ds_type": "json", "type": "chat_template.intel"}]
    (tmp_path / "stop").mkdir()
    (tmp_path / "skip").mkdir()
    stop = write_config(tmp_path / "stop", model_dir, data, max_steps=2)
    skip = write_config(tmp_path / "skip", model_dir, data, max_steps=2, merlina_on_nonfinite="skip",
                        save_strategy="steps", save_steps=2)
    runs = [CliRun(["axolotl", "train", str(stop)], tmp_path), CliRun(["axolotl", "train", str(skip)], tmp_path)]
    stopped, skipped = runs[0].result(check=False), runs[1].result()
    assert stopped.returncode != 0
    output = stopped.stdout + stopped.stderr
    assert "FloatingPointError: non-finite training loss at optimizer step 1: loss nan" in output
    assert re.search(r"of the training dataset \(its `merlina_row` column\): \d+: \S*orca_dpo_pairs\.jsonl row \d+, '",
                     output), output[-3000:]  # the user's file and row, as the Axolotl path recorded them
    logs = [log for log in log_history(tmp_path / "skip" / "out") if "loss" in log]
    assert [log["nonfinite_skipped_steps"] for log in logs] == [1, 2]
    assert all(math.isnan(log["loss"]) for log in logs)


def test_the_skip_count_survives_a_resume(tmp_path, tokenizer, pairs):
    """Step 2 skipped, checkpoint at step 2, resumed there: steps 3-4 log what the uninterrupted run logged
    (the count is the run's, not the session's; `checkpoints` saves the guard's state)."""
    whole = _trainer(tmp_path, tokenizer, pairs, on_nonfinite="skip", save_strategy="steps", save_steps=2)
    whole.add_callback(AtStep(whole, 2, _nan_beta))
    whole.train()
    resumed = _trainer(tmp_path / "resumed", tokenizer, pairs, on_nonfinite="skip")
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    logged = lambda trainer: [(log["step"], log["nonfinite_skipped_steps"], log["loss"])  # noqa: E731
                              for log in trainer.state.log_history if "loss" in log]
    assert logged(whole)[1][1] == 1 and math.isnan(logged(whole)[1][2])
    assert logged(resumed)[-2:] == logged(whole)[-2:]
