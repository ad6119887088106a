"""A NaN or Inf in training is never hidden: the run stops naming the step, its rows and the loss terms, or
the step is skipped and counted (option ``on_nonfinite``: ``stop`` | ``skip``).

transformers' ``logging_nan_inf_filter`` (on by default) replaces a non-finite training loss by the mean of
the logging window's earlier ones, so a run whose every step is NaN logs ``loss`` 0.0 and looks perfect.
Here every training micro-batch's loss and terms are kept on the device as they are made
(`NonFiniteGuard.check_loss`: no host sync, so the backward is queued as before), and once per optimizer step,
after Trainer's gradient norm and before ``optimizer.step()`` (`NonFiniteGuard.check_step`), one read tells
whether any of those losses or the gradient norm is NaN/Inf. The gradient norm is the global one (after DDP's
all-reduce, over FSDP's shards), so every process decides alike.

``stop`` (the default) raises `FloatingPointError` there, before any weight moves: the optimizer step, the
first non-finite micro-batch's ``loss``, ``nll_loss`` and ``or_loss`` and its rows (or, for a gradient, the
rows of the step's whole window) as indices into the training dataset with the start of each prompt. The
last checkpoint is a good one to resume from.

``skip`` drops every gradient of a step whose window had a non-finite loss on any process or whose
gradient norm is non-finite: ``optimizer.step()`` skips parameters without a gradient, so neither the
weights nor the optimizer state move (the learning-rate schedule still advances, as the step is counted).
Each log then carries ``nonfinite_skipped_steps`` (the run's total so far), and a window with skips logs
as ``loss`` the mean over the steps that trained, NaN when none did.

With fp16's GradScaler an infinite gradient is the scaler's routine overflow skip, so only the loss is
checked there; DeepSpeed steps its optimizer inside ``backward``, so ``skip`` is refused with it.
"""

from __future__ import annotations

import math

import torch

from .batch.collator import ROW_COLUMN
from .options import BY_NAME

POLICIES = BY_NAME["on_nonfinite"].choices
SKIPPED = "nonfinite_skipped_steps"
_PROMPT_CHARS = 48  # how much of each named row's prompt the message shows


class NonFiniteGuard:
    """The two checks, and the skip accounting of ``skip``; one per trainer, used by `ORPOTrainerMixin`."""

    def __init__(self, policy: str, trainer) -> None:
        if policy not in POLICIES:
            raise ValueError(f"`on_nonfinite` must be one of {POLICIES}, got {policy!r}")
        if policy == "skip" and trainer.is_deepspeed_enabled:
            raise ValueError("`on_nonfinite: skip` cannot skip a step under DeepSpeed, which steps its optimizer "
                             "inside backward: use `stop` (the default)")
        self.policy, self.trainer = policy, trainer
        self.skipped_total = 0
        self._new_window()
        self._new_log_window()

    def _new_window(self) -> None:
        self._window: list[tuple[dict[str, torch.Tensor], torch.Tensor | None]] = []  # (loss and terms, rows)
        self._window_loss: torch.Tensor | None = None

    def _new_log_window(self) -> None:
        self._trained_loss: torch.Tensor | None = None
        self._trained_steps = 0
        self._skipped_here = 0

    def state_dict(self) -> dict:
        """What a checkpoint keeps (`checkpoints`): the run's skip count and the log window's tally."""
        loss = self._trained_loss
        return {"skipped_total": self.skipped_total, "trained_steps": self._trained_steps,
                "skipped_here": self._skipped_here, "trained_loss": None if loss is None else loss.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_total, self._trained_steps = state["skipped_total"], state["trained_steps"]
        self._skipped_here, self._trained_loss = state["skipped_here"], state["trained_loss"]

    # --- per micro-batch ------------------------------------------------------------------------

    def check_loss(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], batch: dict) -> None:
        """A training micro-batch's loss, terms and rows, kept (detached, on their device) for `check_step`."""
        values = {name: value.detach() for name, value in {"loss": loss, **terms}.items()}
        self._window.append((values, batch.get("row_ids")))

    def record(self, step_loss: torch.Tensor) -> None:
        """The micro-batch loss `training_step` hands Trainer: summed per step for the ``skip`` accounting."""
        if self.policy != "skip":
            return
        loss = step_loss.detach()
        self._window_loss = loss if self._window_loss is None else self._window_loss + loss

    # --- per optimizer step -----------------------------------------------------------------------

    def check_step(self, model, grad_norm):
        """After Trainer's gradient norm, before ``optimizer.step()``: stop, skip (drop the gradients) or go on."""
        accelerator = self.trainer.accelerator
        checked = getattr(accelerator, "scaler", None) is None and grad_norm is not None
        finite, bad_losses = self._read(grad_norm if checked else None)
        if self.policy == "stop" and True in bad_losses:
            values, rows = self._window[bad_losses.index(True)]
            said = ", ".join(f"{name} {float(value):.6g}" for name, value in values.items())
            raise FloatingPointError(f"non-finite training loss at optimizer step {self._step()}: {said}; "
                                     f"{self._describe([rows] if rows is not None else [])}. {self._advice()}")
        if self.policy == "stop" and not finite:
            rows = [rows for _, rows in self._window if rows is not None]
            raise FloatingPointError(f"non-finite gradient norm ({float(_local(grad_norm))}) at optimizer step "
                                     f"{self._step()} with a finite loss; {self._describe(rows)}. {self._advice()}")
        bad = not finite or True in bad_losses
        if self.policy == "skip" and accelerator.num_processes > 1:  # a loss NaN on one process skips everywhere
            bad = bool(accelerator.reduce(torch.tensor(float(bad), device=accelerator.device), reduction="sum") > 0)
        if bad:
            for parameter in model.parameters():
                parameter.grad = None
            self.skipped_total += 1
            self._skipped_here += 1
        elif self.policy == "skip" and self._window_loss is not None:
            loss = self._window_loss.float()
            self._trained_loss = loss if self._trained_loss is None else self._trained_loss + loss
            self._trained_steps += 1
        self._new_window()
        return grad_norm

    def _read(self, grad_norm) -> tuple[bool, list[bool]]:
        """(whether ``grad_norm`` is finite, which window losses are not), in one host read where both are
        tensors on one device (DeepSpeed's norm is a float already; None is not checked)."""
        losses = [values["loss"].float().reshape(()) for values, _ in self._window]
        norm = _local(grad_norm)
        joined = torch.is_tensor(norm) and losses and norm.device == losses[0].device
        if joined:
            losses.append(norm.float().reshape(()))
        flags = torch.stack(losses).isfinite().tolist() if losses else []
        finite = flags.pop() if joined else (norm is None or math.isfinite(float(norm)))
        return finite, [not flag for flag in flags]

    def on_log(self, logs: dict) -> None:
        """``skip``: the run's skip count, and a window's ``loss`` over the steps that trained (NaN if none)."""
        if self.policy != "skip" or "loss" not in logs:
            return
        logs[SKIPPED] = self.skipped_total
        if self._skipped_here:
            logs["loss"] = self._trained_mean()
        self._new_log_window()

    def _trained_mean(self) -> float:
        if not self._trained_steps:
            return float("nan")
        accelerator = self.trainer.accelerator
        total = self._trained_loss.to(accelerator.device)
        if accelerator.num_processes > 1:
            total = accelerator.reduce(total, reduction="mean")
        return round(float(total) / self._trained_steps, 4)

    # --- the message --------------------------------------------------------------------------------

    def _step(self) -> int:
        return self.trainer.state.global_step + 1

    def _describe(self, row_tensors: list[torch.Tensor]) -> str:
        """``rows 3, 17 of the training dataset (…): 3: pairs.jsonl row 40, 'prompt…'; 17: …`` (the source file and
        row where the Axolotl path recorded them: `integration.datasets.with_provenance`), or why rows are unknown."""
        if not row_tensors:
            return "its rows are unknown (the training dataset is not a `datasets.Dataset`)"
        rows = sorted({int(row) for tensor in row_tensors for row in tensor.tolist()})
        dataset, tokenizer = self.trainer.train_dataset, self.trainer.processing_class
        starts = []
        for row in rows[:8]:
            item = dataset[row]
            text = tokenizer.decode(item["prompt_input_ids"][:32])
            where = f"{item['merlina_source']} row {item['merlina_source_row']}, " if "merlina_source" in item else ""
            starts.append(f"{row}: {where}{text[:_PROMPT_CHARS] + ('…' if len(text) > _PROMPT_CHARS else '')!r}")
        more = f" and {len(rows) - 8} more" if len(rows) > 8 else ""
        return (f"rows {', '.join(map(str, rows))} of the training dataset (its `{ROW_COLUMN}` column): "
                f"{'; '.join(starts)}{more}")

    def _advice(self) -> str:
        return ("The optimizer has not stepped on this batch. Check those rows and the learning rate, resume from the last "
                "checkpoint, or set `on_nonfinite` (YAML `merlina_on_nonfinite`) to `skip` to skip such steps")


def _local(value):
    """FSDP2's replicated DTensor gradient norm as a plain tensor; anything else as it is."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def with_row_index(dataset):
    """``dataset`` with a ``merlina_row`` column (0..n-1), so each batch can say which rows it holds.

    A `datasets.Dataset` only (an in-memory column beside the cached files, nothing rewritten); other
    datasets are returned as they are, and a non-finite loss in them names no rows.
    """
    import datasets
    import numpy as np

    if not isinstance(dataset, datasets.Dataset) or ROW_COLUMN in dataset.column_names:
        return dataset
    return dataset.add_column(ROW_COLUMN, np.arange(len(dataset)))
