"""Exact resume, checked against the uninterrupted run of the same config and seed.

Through the real `axolotl train` CLI (LoRA with gradient accumulation, and a full fine-tune whose
resumed steps cross into a second epoch, both with a linear beta schedule): a run is killed with
SIGKILL of its process group past checkpoint 4 of 8, resumed (`resume_from_checkpoint: true` past a
fabricated incomplete newer checkpoint, and an explicit path), and its steps 5-8 must log what the
uninterrupted run logged and end on bit-identical weights. Through the Python API: the ORPO metrics
and Trainer's loss accumulated between logs at the save (logging every 3 steps, saving every 4) are
restored, and without the ORPO state file they would not be. And how `checkpoints.py` tells a complete
checkpoint from one a kill left half-written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from e2e_helpers import CliRun, write_config
from merlina_orpo_plugin import MerlinaORPOTrainer
from merlina_orpo_plugin.checkpoints import MARKER_NAME, STATE_NAME, latest_complete_checkpoint, resolve_resume
from testkit import orpo_args, pairs_path, single_turn_pairs, tiny_llama, tiny_model_dir

TESTS = Path(__file__).resolve().parent
PAUSE_STEP, PAUSE_FLAG = "MERLINA_TEST_PAUSE_STEP", "MERLINA_TEST_PAUSE_FLAG"
SCHEDULE = dict(merlina_beta_schedule="linear", merlina_beta_end=0.5)


def __getattr__(name: str):
    """`test_resume.PausePlugin`, which the killed runs list under `plugins:`: built on first access, so
    collecting this module neither needs nor imports Axolotl. After optimizer step $MERLINA_TEST_PAUSE_STEP
    it touches $MERLINA_TEST_PAUSE_FLAG and sleeps, so the test kills it at a known step, past a checkpoint."""
    if name != "PausePlugin":
        raise AttributeError(name)
    from axolotl.integrations.base import BasePlugin
    from transformers import TrainerCallback

    class PauseCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(os.environ[PAUSE_STEP]):
                Path(os.environ[PAUSE_FLAG]).touch()
                time.sleep(600)

    class PausePlugin(BasePlugin):
        def add_callbacks_post_trainer(self, cfg, trainer):
            return [PauseCallback()]

    return PausePlugin


# --- through the CLI ---------------------------------------------------------------------------------

CASES = {  # name: (dataset entry, overrides, the step the killed run pauses at, how the resume names the checkpoint)
    "lora": ({"path": str(pairs_path("orca_dpo_pairs.jsonl")), "ds_type": "json", "type": "chat_template.intel"},
             dict(micro_batch_size=1, gradient_accumulation_steps=2, save_steps=2), 5, "true"),
    # 26 pairs in batches of 4: 7 steps an epoch, so step 8 runs in epoch 2, reshuffled after the resume
    "full": ({"path": str(pairs_path("ultrafeedback_h4.jsonl")), "ds_type": "json", "type": "chat_template.argilla"},
             dict(micro_batch_size=4, adapter=None, learning_rate=1e-4, save_steps=4), 6, "path"),
}


def _config(directory: Path, model: Path, case: str, **extra) -> Path:
    entry, overrides, _, _ = CASES[case]
    return write_config(directory, model, [entry], max_steps=8, save_strategy="steps", **SCHEDULE, **overrides, **extra)


def _train(config: Path, **env) -> CliRun:
    return CliRun(["axolotl", "train", str(config), "--launcher", "python"], cwd=config.parent, **env)


def _kill_when_paused(run: CliRun, flag: Path, checkpoint: Path) -> None:
    """SIGKILL the run's process group once it has paused past ``checkpoint`` (and the checkpoint is there)."""
    while not (flag.exists() and (checkpoint / MARKER_NAME).exists()):
        if run.process.poll() is not None:
            run.result()  # it ended before pausing: fail with its output
            raise AssertionError("the run ended before its pause step")
        time.sleep(0.2)
    run.stop()


def _fake_incomplete(checkpoint: Path, step: int) -> Path:
    """What a kill while saving leaves: ``checkpoint``'s files under a newer step, without the optimizer or the mark."""
    target = checkpoint.with_name(f"checkpoint-{step}")
    shutil.copytree(checkpoint, target)
    (target / MARKER_NAME).unlink()
    (target / "optimizer.pt").unlink()
    return target


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """{case: (uninterrupted out dir, resumed out dir, resumed run's output)}: the uninterrupted and the
    to-be-killed runs of both cases side by side, then each resume as soon as its run is killed."""
    base = tmp_path_factory.mktemp("resume")
    model = tiny_model_dir(base / "model")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    plugins = dict(plugins=["merlina_orpo_plugin.MerlinaORPOPlugin", "test_resume.PausePlugin"])
    whole, killed = {}, {}
    for case, (_, _, pause, _) in CASES.items():
        (base / case / "whole").mkdir(parents=True)
        (base / case / "killed").mkdir()
        whole[case] = _train(_config(base / case / "whole", model, case))
        flag = base / case / "paused"
        killed[case] = (_train(_config(base / case / "killed", model, case, **plugins), **env,
                               **{PAUSE_STEP: str(pause), PAUSE_FLAG: str(flag)}), flag)
    resumed = {}
    for case, (run, flag) in killed.items():
        out = base / case / "killed" / "out"
        _kill_when_paused(run, flag, out / "checkpoint-4")
        _fake_incomplete(out / "checkpoint-4", 6)
        how = True if CASES[case][3] == "true" else str(out / "checkpoint-4")
        resumed[case] = _train(_config(base / case / "killed", model, case, resume_from_checkpoint=how))
    outputs = {case: run.result() for case, run in resumed.items()}
    for run in whole.values():
        run.result()
    yield {case: (base / case / "whole" / "out", base / case / "killed" / "out", outputs[case]) for case in CASES}


def _losses(output_dir: Path) -> list[dict]:
    state = json.loads((output_dir / "checkpoint-8" / "trainer_state.json").read_text())
    return [log for log in state["log_history"] if "loss" in log]


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (path,) = [p for p in (output_dir / name for name in ("adapter_model.safetensors", "model.safetensors")) if p.exists()]
    return load_file(path)


@pytest.mark.slow
@pytest.mark.needs("axolotl")
@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_run_resumes_exactly(cli_runs, case):
    """Steps 5-8 of the resumed run log the uninterrupted run's losses, gradient norms, beta and ORPO
    metrics (every logged number equal), and the final weights are bit-identical. The resume trained
    only steps 5-8; `true` passed over the incomplete checkpoint-6 with a log line naming it. Steps 1-4
    and checkpoint-4 come from the killed run, a second run of the same config: equal too (reproducible)."""
    whole, resumed, output = cli_runs[case]
    expected, got = _losses(whole), _losses(resumed)
    assert [log["step"] for log in got] == list(range(1, 9))
    assert got == expected  # steps 1-4 from the killed run's checkpoint (the same seed: reproducible), 5-8 resumed
    assert [log["beta"] for log in got] == sorted({log["beta"] for log in got})  # the schedule moved every step
    trained = re.findall(r"\{'loss': ", output.stdout + output.stderr)
    assert len(trained) == 4, "the resumed run should train steps 5-8 only"
    assert re.search(r"Skipping incomplete checkpoint \S+checkpoint-6: no merlina_checkpoint_complete", output.stderr
                     + output.stdout) or CASES[case][3] == "path"
    for expected_dir, got_dir in ((whole / "checkpoint-4", resumed / "checkpoint-4"), (whole, resumed)):
        expected_weights, got_weights = _weights(expected_dir), _weights(got_dir)
        assert expected_weights.keys() == got_weights.keys()
        assert all(torch.equal(expected_weights[name], got_weights[name]) for name in expected_weights), got_dir


# --- through the Python API --------------------------------------------------------------------------


def _api_run(output_dir: Path, tokenizer, resume=None):
    """8 steps, saving every 4 and logging every 3: at the save, step 4's metrics wait for the step-6 log."""
    args = orpo_args(output_dir, max_steps=8, save_strategy="steps", save_steps=4, logging_steps=3,
                     per_device_train_batch_size=2, beta_schedule="linear", beta_end=0.4)
    trainer = MerlinaORPOTrainer(tiny_llama(seed=0), args, train_dataset=Dataset.from_list(single_turn_pairs(16)),
                                 processing_class=tokenizer)
    result = trainer.train(resume_from_checkpoint=resume)
    return trainer, {log["step"]: log for log in trainer.state.log_history if "loss" in log}, result.training_loss


def test_the_python_api_restores_the_metrics_and_loss_accumulated_between_logs(tmp_path, tokenizer, caplog):
    """Resumed from checkpoint-4 (by `resume_from_checkpoint=True`, past an incomplete checkpoint-6): the
    step-6 log (steps 4-6) and the final `train_loss` equal the uninterrupted run's. With the ORPO state
    file removed, the step-6 log averages steps 5-6 only, so it differs: the state is what makes it exact."""
    _, whole, whole_loss = _api_run(tmp_path / "whole", tokenizer)
    assert sorted(whole) == [3, 6]
    for name in ("exact", "no-state"):
        shutil.copytree(tmp_path / "whole" / "checkpoint-4", tmp_path / name / "checkpoint-4")
    _fake_incomplete(tmp_path / "exact" / "checkpoint-4", 6)
    with caplog.at_level(logging.WARNING, logger="merlina_orpo_plugin.checkpoints"):
        trainer, exact, exact_loss = _api_run(tmp_path / "exact", tokenizer, resume=True)
    assert "Skipping incomplete checkpoint" in caplog.text and "checkpoint-6" in caplog.text
    assert exact[6] == whole[6]
    assert exact_loss == whole_loss

    (tmp_path / "no-state" / "checkpoint-4" / STATE_NAME).unlink()
    _, partial, _ = _api_run(tmp_path / "no-state", tokenizer, resume=str(tmp_path / "no-state" / "checkpoint-4"))
    assert partial[6]["loss"] != whole[6]["loss"] and partial[6]["nll_loss"] != whole[6]["nll_loss"]


# --- which checkpoint is the latest ------------------------------------------------------------------


def _complete(folder: Path, step: int) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "optimizer.pt").write_bytes(b"x" * 10)
    (path / MARKER_NAME).write_text(json.dumps({"global_step": step, "files": {"optimizer.pt": 10}}))
    return path


def test_latest_skips_unmarked_and_truncated_checkpoints_and_says_so(tmp_path, caplog):
    """checkpoint-10 (no mark) and checkpoint-9 (a file shorter than the mark says) are passed over, each
    with a log line; checkpoint-8 wins over checkpoint-2 by step number, not by name order."""
    for step in (2, 8):
        _complete(tmp_path, step)
    (tmp_path / "checkpoint-10").mkdir()
    (_complete(tmp_path, 9) / "optimizer.pt").write_bytes(b"x" * 4)
    with caplog.at_level(logging.WARNING, logger="merlina_orpo_plugin.checkpoints"):
        assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
    assert re.search(r"checkpoint-10: no merlina_checkpoint_complete\.json", caplog.text)
    assert re.search(r"checkpoint-9: `optimizer\.pt` is 4 bytes, 10 when saved", caplog.text)
    assert latest_complete_checkpoint(tmp_path / "missing") is None


def test_axolotl_resume_keys_become_the_latest_complete_path(tmp_path):
    """The raw YAML (`register`): `resume_from_checkpoint: true` and `auto_resume_from_checkpoints` give
    the path; `true` with nothing complete raises naming the key; auto-resume with nothing starts afresh."""
    out = tmp_path / "out"
    _complete(out, 4)
    (out / "checkpoint-6").mkdir()
    for raw in ({"resume_from_checkpoint": True}, {"auto_resume_from_checkpoints": True}):
        cfg = {"output_dir": str(out), **raw}
        resolve_resume(cfg)
        assert cfg["resume_from_checkpoint"] == str(out / "checkpoint-4")
    explicit = {"output_dir": str(out), "resume_from_checkpoint": str(out / "checkpoint-6")}
    resolve_resume(explicit)  # the user's own choice is kept (with a warning)
    assert explicit["resume_from_checkpoint"] == str(out / "checkpoint-6")
    with pytest.raises(ValueError, match=r"`resume_from_checkpoint: true`: no complete checkpoint under `output_dir`"):
        resolve_resume({"output_dir": str(tmp_path / "empty"), "resume_from_checkpoint": True})
    fresh = {"output_dir": str(tmp_path / "empty"), "auto_resume_from_checkpoints": True}
    resolve_resume(fresh)
    assert fresh["resume_from_checkpoint"] is None and fresh["auto_resume_from_checkpoints"] is False
    only_incomplete = tmp_path / "only-incomplete"
    (only_incomplete / "checkpoint-6").mkdir(parents=True)
    auto = {"output_dir": str(only_incomplete), "auto_resume_from_checkpoints": True}
    resolve_resume(auto)  # Axolotl's own lookup (highest step, complete or not) must not run after ours
    assert auto["resume_from_checkpoint"] is None and auto["auto_resume_from_checkpoints"] is False



def test_save_total_limit_deletes_old_checkpoints_only_after_the_new_one_is_marked(tmp_path, tokenizer, monkeypatch):
    """A save killed before its mark (here: the mark fails at step 4) leaves checkpoint-2 complete to resume
    from. Trainer alone deletes the older checkpoints inside its save, before the mark would be written.
    Without the failure, save_total_limit=1 keeps only the newest, as Trainer does."""
    import merlina_orpo_plugin.checkpoints as checkpoints

    args = orpo_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1,
                     per_device_train_batch_size=2)
    real_mark = checkpoints._write_marker

    def mark(folder, step):
        if step == 4:
            raise KeyboardInterrupt("killed before the mark")
        real_mark(folder, step)

    monkeypatch.setattr(checkpoints, "_write_marker", mark)
    trainer = MerlinaORPOTrainer(tiny_llama(seed=0), args, train_dataset=Dataset.from_list(single_turn_pairs(8)),
                                 processing_class=tokenizer)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")

    monkeypatch.setattr(checkpoints, "_write_marker", real_mark)
    shutil.rmtree(tmp_path / "checkpoint-4")
    trainer = MerlinaORPOTrainer(tiny_llama(seed=0), args, train_dataset=Dataset.from_list(single_turn_pairs(8)),
                                 processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=True)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4"]
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
