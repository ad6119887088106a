"""What a training process measures about itself: step times, memory, and tokens per batch.

Used in-process by the direct runners (`benchmarks.direct`) and, inside the process that
``axolotl train`` launches, by the Axolotl plugin `benchmarks.axolotl_timing`. Results go to one
JSON file per configuration.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


# --- memory -------------------------------------------------------------------------------------

def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_kb() -> int | None:
    """Resident set size now, in KiB (Linux /proc; None elsewhere)."""
    return _status_kb("VmRSS")


def max_rss_kb() -> int:
    """Peak resident set size of this process, in KiB (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0: ``5`` to /proc/self/clear_refs).

    After a reset ``ru_maxrss`` reports the peak since the reset, so model loading and tokenising
    before training do not hide the peak of training itself. False where the reset is refused.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _cuda():
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def _sync() -> None:
    cuda = _cuda()
    if cuda is not None:
        cuda.synchronize()


# --- timing callback ----------------------------------------------------------------------------

class StepTimer(TrainerCallback):
    """Wall-clock (and process CPU) time of steps ``warmup .. warmup + steps - 1`` (on_step_begin ->
    on_step_end), RSS before training and peak memory during training; writes ``result_path`` at train end.

    A step's time covers forward, backward, gradient clipping and the optimizer step; fetching and
    collating the batch happens before `on_step_begin` in `transformers.Trainer` and is counted
    only in ``step_interval_seconds`` (on_step_end to on_step_end), kept in the JSON.
    """

    def __init__(self, warmup: int, steps: int, result_path: str | Path, extra: dict[str, Any] | None = None):
        self.warmup, self.steps, self.result_path = warmup, steps, Path(result_path)
        self.extra: dict[str, Any] = dict(extra or {})
        self.step_seconds: list[float] = []
        self.step_cpu_seconds: list[float] = []  # process CPU time (all threads): less sensitive to other load
        self.step_interval_seconds: list[float] = []
        self.memory: dict[str, Any] = {}
        self._start: float | None = None
        self._cpu_start = 0.0
        self._last_end: float | None = None
        self._trainer = None
        self._batch_size = 0

    def attach(self, trainer, batch_size: int) -> None:
        """Measure ``trainer``'s settings and the timed batches' tokens when training begins (its
        collator and dataloader are final by then), before the memory baseline is taken."""
        self._trainer, self._batch_size = trainer, batch_size

    def _timed(self, state) -> bool:
        return state.global_step >= self.warmup and len(self.step_seconds) < self.steps

    def on_train_begin(self, args, state, control, **kwargs):
        if self._trainer is not None:
            trainer, self._trainer = self._trainer, None  # no reference cycle kept through training
            self.extra["trainer"] = describe_trainer(trainer)
            self.extra["tokens"] = token_stats(
                trainer.train_dataset, trainer.data_collator, self._batch_size, self.warmup, self.steps
            )
        _sync()
        self.memory.update(rss_before_train_kb=rss_kb(), peak_rss_before_train_kb=max_rss_kb())
        self.memory["peak_reset"] = reset_peak_rss()
        cuda = _cuda()
        if cuda is not None:
            self.memory["cuda_allocated_before_train"] = cuda.memory_allocated()
            cuda.reset_peak_memory_stats()

    def on_step_begin(self, args, state, control, **kwargs):
        if self._timed(state):
            _sync()
            self._start = time.perf_counter()
            self._cpu_start = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        now = time.perf_counter()
        if self._start is not None:
            self.step_seconds.append(now - self._start)
            self.step_cpu_seconds.append(time.process_time() - self._cpu_start)
            if self._last_end is not None:
                self.step_interval_seconds.append(now - self._last_end)
            self._start = None
        self._last_end = now

    def on_train_end(self, args, state, control, **kwargs):
        _sync()
        self.memory.update(peak_rss_train_kb=max_rss_kb(), rss_after_train_kb=rss_kb())
        cuda = _cuda()
        if cuda is not None:
            self.memory["cuda_max_allocated"] = cuda.max_memory_allocated()
            self.memory["cuda_max_reserved"] = cuda.max_memory_reserved()
        self.write()

    def write(self) -> None:
        result = {
            "warmup_steps": self.warmup,
            "timed_steps": len(self.step_seconds),
            "step_seconds": self.step_seconds,
            "step_cpu_seconds": self.step_cpu_seconds,
            "step_interval_seconds": self.step_interval_seconds,
            "memory": self.memory,
            **self.extra,
        }
        self.result_path.parent.mkdir(parents=True, exist_ok=True)
        self.result_path.write_text(json.dumps(result, indent=1, default=str))


# --- tokens per batch ---------------------------------------------------------------------------

def processed_tokens(batch: dict) -> int:
    """Token positions the model runs on for one collated batch.

    Ours: ``input_ids.numel()``. TRL's collator pads chosen and rejected separately and its
    ``concatenated_inputs`` pads both to the longer one, so the model sees ``2B x max(Tc, Tr)``.
    """
    if "input_ids" in batch:
        return int(batch["input_ids"].numel())
    chosen, rejected = batch["chosen_input_ids"], batch["rejected_input_ids"]
    return int(chosen.shape[0] * 2 * max(chosen.shape[1], rejected.shape[1]))


def unique_tokens(rows: list[dict], batch: dict) -> int:
    """Prompt once + chosen + rejected, summed over the pairs (after each implementation's own
    tokenisation, BOS/EOS included)."""
    if "pair_lengths" in batch:
        return int(batch["pair_lengths"].sum())
    total = 0
    for row in rows:
        if "chosen_labels" in row:  # TRL: chosen/rejected_input_ids include the prompt, labels mask it
            rejected_prompt = sum(1 for label in row["rejected_labels"] if label == -100)
            total += len(row["chosen_input_ids"]) + len(row["rejected_input_ids"]) - rejected_prompt
        else:  # ours: prompt and completions apart
            total += len(row["prompt_input_ids"]) + len(row["chosen_input_ids"]) + len(row["rejected_input_ids"])
    return total


def token_stats(dataset, collator, batch_size: int, first_batch: int, num_batches: int) -> dict[str, Any]:
    """Run ``collator`` over sequential batches ``first_batch ..`` of ``dataset`` (the timed ones
    under sequential sampling), outside any timing."""
    processed = unique = pairs = 0
    source = "dataset rows"
    for b in range(first_batch, first_batch + num_batches):
        rows = [dataset[i] for i in range(b * batch_size, min((b + 1) * batch_size, len(dataset)))]
        if not rows:
            break
        batch = collator(rows)
        processed += processed_tokens(batch)
        unique += unique_tokens(rows, batch)
        pairs += len(rows)
        if "pair_lengths" in batch:
            source = "collator pair_lengths"
    return {
        "pairs": pairs,
        "processed_tokens": processed,
        "unique_tokens": unique,
        "processed_unique_ratio": processed / unique if unique else None,
        "unique_source": source,
    }


def describe_trainer(trainer) -> dict[str, Any]:
    """The settings that must match across implementations, read back from the live trainer."""
    import torch

    args, model = trainer.args, trainer.model
    embeddings = model.get_input_embeddings().weight.numel() if hasattr(model, "get_input_embeddings") else 0
    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters())
    collator = trainer.data_collator
    speed = getattr(trainer, "speed", None)  # ours: the SpeedPlan actually used
    return {
        "trainer_class": type(trainer).__module__ + "." + type(trainer).__name__,
        "collator_class": type(collator).__name__,
        "collator": {
            name: getattr(collator, name)
            for name in ("prefix_sharing", "padding_free", "pad_to_multiple_of", "pack_length")
            if hasattr(collator, name)
        },
        "speed_plan": None if speed is None else {
            name: getattr(speed, name, None) for name in ("prefix_sharing", "padding_free", "loss_chunk_size", "fallbacks")
        },
        "train_rows": len(trainer.train_dataset),
        "params": params,
        "params_without_input_embeddings": params - embeddings,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "dtype": str(first.dtype),
        "torch_threads": torch.get_num_threads(),
        "device": str(first.device),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "args": {
            name: str(getattr(args, name, None))
            for name in (
                "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "optim",
                "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "max_steps", "bf16",
                "gradient_checkpointing", "train_sampling_strategy", "dataloader_num_workers", "seed", "beta",
                "max_length", "prefix_sharing", "padding_free", "loss_chunk_size", "merlina_beta",
                "merlina_prefix_sharing", "merlina_padding_free", "merlina_loss_chunk_size",
            )
            if hasattr(args, name)
        },
    }
