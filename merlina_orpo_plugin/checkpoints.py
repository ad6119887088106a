"""Exact resume: the trainer's own ORPO state in every checkpoint, and a mark that the save finished.

What `transformers.Trainer` already restores on resume: weights, optimizer, LR scheduler, RNG states,
`TrainerState` (so the beta schedule, a pure function of `global_step`, and the data order, skipped
batch by batch through whole accumulation windows). What it does not: the ORPO metrics accumulated
since the last log (`MetricStore`), and its own loss accumulators (`_tr_loss` since the last log,
`_total_loss_scalar` behind the final `train_loss`), which restart at zero, so the first log after
the resume and `train_loss` differ from the uninterrupted run's (5.16 divides this session's loss sum
by all steps; 5.20 takes this session's mean). They go in `merlina_orpo_state.pt` (one per rank in a
multi-process run) and are restored before the first resumed step: `train_loss` is the whole run's mean.

transformers 5.16 and 5.20 write `checkpoint-N` in place (no temporary folder, nothing marks the end)
and `get_last_checkpoint`, like Axolotl's `determine_last_checkpoint`, takes the highest step: a run
killed while saving leaves a folder that the next "resume from the latest" picks and then fails on
(or loads half of). So the save ends with `merlina_checkpoint_complete.json`, written last and listing
every file with its size; "latest" means the newest checkpoint whose mark is there and whose files
match it, and each one passed over is named in a log line. With `save_total_limit`, the old
checkpoints are deleted after the new one's mark, not before it as Trainer does.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

logger = logging.getLogger("merlina_orpo_plugin.checkpoints")

MARKER_NAME = "merlina_checkpoint_complete.json"
STATE_NAME = "merlina_orpo_state.pt"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why the checkpoint folder ``path`` is incomplete, or None when its completion mark matches its files."""
    folder = Path(path)
    marker = folder / MARKER_NAME
    if not marker.is_file():
        return f"no {MARKER_NAME} (the save did not finish, or another trainer wrote it)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{MARKER_NAME} is unreadable ({error})"
    for name, size in files.items():
        file = folder / name
        if not file.is_file():
            return f"`{name}` is missing"
        if file.stat().st_size != size:
            return f"`{name}` is {file.stat().st_size} bytes, {size} when saved"
    return None


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The complete ``checkpoint-N`` under ``output_dir`` with the highest N; one log line per newer
    incomplete one passed over. None when there is none."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()]
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("Skipping incomplete checkpoint %s: %s; resuming from the previous complete one", path, problem)
    return None


def resolve_resume(cfg: dict) -> None:
    """Axolotl's raw config: `resume_from_checkpoint: true`, or `auto_resume_from_checkpoints` without a
    path, becomes the path of the latest complete checkpoint under `output_dir` (Axolotl's own lookup
    takes the highest step, complete or not, and its schema takes a path only; it is turned off here). An
    explicit path is kept (the trainer warns when it is incomplete)."""
    value = cfg.get("resume_from_checkpoint")
    output_dir = cfg.get("output_dir") or "./model-out"  # Axolotl's default
    if value is True or (value in (None, False) and cfg.get("auto_resume_from_checkpoints")):
        latest = latest_complete_checkpoint(output_dir)
        if latest is None and value is True:
            raise ValueError(f"`resume_from_checkpoint: true`: no complete checkpoint under `output_dir` {output_dir}")
        cfg["resume_from_checkpoint"] = latest
        cfg["auto_resume_from_checkpoints"] = False  # else Axolotl's lookup fills a None with the highest step
        if latest is not None:
            logger.warning("Resuming from the latest complete checkpoint, %s", latest)
    elif value is False:
        cfg["resume_from_checkpoint"] = None


def warn_if_incomplete(path) -> None:
    problem = checkpoint_problem(path)
    if problem is not None:
        logger.warning("`resume_from_checkpoint` %s may be incomplete: %s", path, problem)


class CheckpointStateMixin:
    """Saves and restores the ORPO trainer's own state with each checkpoint (see the module docstring).

    Sits under `ORPOTrainerMixin`, so on any `transformers.Trainer`: `train(resume_from_checkpoint=True)`
    takes the latest complete checkpoint, `_save_checkpoint` adds the state and the completion mark.
    """

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:  # transformers' own message for this case
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        elif resume_from_checkpoint:
            warn_if_incomplete(resume_from_checkpoint)
        self._orpo_resume_from = resume_from_checkpoint or None
        if not any(isinstance(cb, _RestoreCallback) for cb in self.callback_handler.callbacks):
            self.add_callback(_RestoreCallback(self))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model, trial, **kwargs):
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # Trainer deletes old checkpoints at the end of its save: not yet
        try:
            result = super()._save_checkpoint(model, trial, **kwargs)
        finally:
            self.args.save_total_limit = limit
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = run_dir / f"checkpoint-{self.state.global_step}"
        torch.save(self._orpo_state(), folder / _state_name(self.args))
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()  # every rank's files are on disk before the mark
        if self.args.should_save:
            _write_marker(folder, self.state.global_step)
            # Only now, with this one marked: a kill between the deletion and the mark left none complete.
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        return result

    def _orpo_state(self) -> dict:
        """What the next steps read that Trainer's checkpoint does not hold (CPU tensors, plain numbers);
        ``beta`` only for a reader: the schedule recomputes it from the step."""
        tr_loss = getattr(self, "_tr_loss", None)
        return {
            "version": 1,
            "global_step": self.state.global_step,
            "beta": float(self.beta),
            "metrics": self._orpo_metrics.state_dict(),
            "nonfinite": self._nonfinite.state_dict(),
            "tr_loss": None if tr_loss is None else tr_loss.detach().cpu(),
            "total_loss_scalar": getattr(self, "_total_loss_scalar", None),
            "globalstep_last_logged": getattr(self, "_globalstep_last_logged", None),
        }

    def _restore_orpo_state(self, checkpoint: str) -> None:
        path = Path(checkpoint) / _state_name(self.args)
        if not path.is_file():
            logger.warning("%s has no %s: the ORPO metrics and the logged loss restart from the resumed step",
                           checkpoint, path.name)
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["global_step"] != self.state.global_step:
            raise ValueError(f"{path} is from step {state['global_step']}, the checkpoint from step {self.state.global_step}")
        device = self.accelerator.device
        self._orpo_metrics.load_state_dict(state["metrics"], device)
        self._nonfinite.load_state_dict(state["nonfinite"])
        if state["tr_loss"] is not None and hasattr(self, "_tr_loss"):
            self._tr_loss = state["tr_loss"].to(self._tr_loss.device)
            self._total_loss_scalar = state["total_loss_scalar"]
            self._globalstep_last_logged = state["globalstep_last_logged"]
            if hasattr(self, "_initial_global_step"):  # transformers >= 5.20 divides by this session's steps
                self._initial_global_step = 0  # the total now covers the whole run: `train_loss` is its mean


def _state_name(args) -> str:
    """One state file per rank in a multi-process run (metrics accumulate per rank), as Trainer's RNG files."""
    return STATE_NAME if args.world_size <= 1 else STATE_NAME.replace(".pt", f"_{args.process_index}.pt")


def _write_marker(folder: Path, step: int) -> None:
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MARKER_NAME}
    temporary = folder / f".{MARKER_NAME}.tmp"
    temporary.write_text(json.dumps({"global_step": step, "files": files}, indent=1))
    os.replace(temporary, folder / MARKER_NAME)  # the mark appears whole or not at all


class _RestoreCallback(TrainerCallback):
    """Restores the ORPO state at `on_train_begin`: after Trainer has loaded the checkpoint and reset its
    loss accumulators, before the first resumed step."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        checkpoint = getattr(self.trainer, "_orpo_resume_from", None)
        if checkpoint:
            self.trainer._restore_orpo_state(checkpoint)
