"""What a process measures about itself: step times, peak memory, tokens per timed batch, the matmul peak."""

from __future__ import annotations

import gc
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from .workload import matmul_params


def rss_kb() -> int | None:
    """Resident set size now, in KiB (None without Linux /proc)."""
    status = Path("/proc/self/status")
    return int(status.read_text().split("VmRSS:")[1].split()[0]) if status.exists() else None


def max_rss_kb() -> int:
    """Peak resident set size of this process, in KiB (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cuda():
    return torch.cuda if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def sync() -> None:
    if _cuda() is not None:
        torch.cuda.synchronize()


def free(collect: bool = False) -> None:
    """Hand the GPU's cache back after a collection (on CPU only with ``collect``: it costs about half a second)."""
    if collect or _cuda() is not None:
        gc.collect()
    if _cuda() is not None:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class PeakDelta:
    """Peak memory from ``start``: CUDA max allocated, else the RSS high-water mark reset there.

    ``with PeakDelta() as m:`` -> ``m.seconds``, ``m.bytes`` (the block's peak growth), ``m.reset``."""

    def start(self) -> dict[str, Any]:
        sync()
        self.cuda, self.reset = _cuda() is not None, True
        info = {"rss_before_kb": rss_kb(), "peak_rss_before_kb": max_rss_kb()}
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.reset = False
        if self.cuda:
            info["cuda_allocated_before"] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        self.before = info["cuda_allocated_before"] if self.cuda else (info["rss_before_kb"] or 0) * 1024
        return {**info, "peak_reset": self.reset}

    def peak_bytes(self) -> int:
        sync()
        return torch.cuda.max_memory_allocated() if self.cuda else max_rss_kb() * 1024

    def stop(self) -> dict[str, Any]:
        info = {"peak_rss_kb": max_rss_kb(), "rss_after_kb": rss_kb()}
        if self.cuda:
            info.update(cuda_max_allocated=torch.cuda.max_memory_allocated(),
                        cuda_max_reserved=torch.cuda.max_memory_reserved())
        return info

    def __enter__(self):
        self.start()
        self.began = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync()
        self.seconds = time.perf_counter() - self.began
        self.bytes = self.peak_bytes() - self.before


class StepTimer(TrainerCallback):
    """Wall and CPU time of the steps after ``warmup``, and memory; ``result`` at train end (and to ``result_path``)."""

    def __init__(self, warmup: int, steps: int, result_path: str | Path | None = None, extra: dict | None = None):
        self.warmup, self.steps, self.result_path, self.extra = warmup, steps, result_path, dict(extra or {})
        self.step_seconds, self.step_cpu_seconds, self.memory = [], [], {}
        self.watch, self._start, self._trainer, self.result = PeakDelta(), None, None, None

    def attach(self, trainer, batch_size: int) -> None:
        """Describe ``trainer`` and count the timed batches' tokens at train begin, before the memory baseline."""
        self._trainer, self._batch_size = trainer, batch_size

    def on_train_begin(self, args, state, control, **kwargs):
        if self._trainer is not None:
            trainer, self._trainer = self._trainer, None  # no reference cycle kept through training
            self.extra.update(trainer=describe_trainer(trainer), tokens=token_stats(
                trainer.train_dataset, trainer.data_collator, self._batch_size, self.warmup, self.steps))
        self.memory.update(self.watch.start())

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step >= self.warmup and len(self.step_seconds) < self.steps:
            sync()
            self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            sync()
            self.step_seconds.append(time.perf_counter() - self._start[0])
            self.step_cpu_seconds.append(time.process_time() - self._start[1])
            self._start = None

    def on_train_end(self, args, state, control, **kwargs):
        self.memory.update(self.watch.stop())
        self.result = {"warmup_steps": self.warmup, "timed_steps": len(self.step_seconds),
                       "step_seconds": self.step_seconds, "step_cpu_seconds": self.step_cpu_seconds,
                       "memory": self.memory, **self.extra}
        if self.result_path is not None:
            Path(self.result_path).write_text(json.dumps(self.result, indent=1, default=str))


def matmul_peak_tflops(size: int = 8192, repeats: int = 10, warmup: int = 3) -> float:
    """bf16 TFLOP/s of a timed ``size``^3 matmul on the current GPU (mean of ``repeats`` after ``warmup``)."""
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(warmup):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def processed_tokens(batch: dict) -> int:
    """Token positions the model runs on for one collated batch (TRL: ``2B x max(Tc, Tr)``)."""
    if "input_ids" in batch:
        return int(batch["input_ids"].numel())
    chosen, rejected = batch["chosen_input_ids"], batch["rejected_input_ids"]
    return int(chosen.shape[0] * 2 * max(chosen.shape[1], rejected.shape[1]))


def unique_tokens(rows: list[dict], batch: dict) -> int:
    """Prompt once + chosen + rejected over the pairs, in each implementation's own tokenisation."""
    if "pair_lengths" in batch:
        return int(batch["pair_lengths"].sum())
    total = 0
    for row in rows:
        if "chosen_labels" in row:  # TRL: chosen/rejected_input_ids include the prompt, labels mask it
            rejected_prompt = sum(1 for label in row["rejected_labels"] if label == -100)
            total += len(row["chosen_input_ids"]) + len(row["rejected_input_ids"]) - rejected_prompt
        elif "prompt_input_ids" in row:  # ours: prompt and completions apart
            total += len(row["prompt_input_ids"]) + len(row["chosen_input_ids"]) + len(row["rejected_input_ids"])
        else:  # the causal-LM limit: one row is one pair's unique tokens
            total += len(row["input_ids"])
    return total


def token_stats(dataset, collator, batch_size: int, first_batch: int, num_batches: int) -> dict[str, Any]:
    """Tokens of the timed batches (sequential sampling), collated outside any timing."""
    processed, unique, pairs = [], [], []
    for b in range(first_batch, first_batch + num_batches):
        rows = [dataset[i] for i in range(b * batch_size, min((b + 1) * batch_size, len(dataset)))]
        if not rows:
            break
        batch = collator(rows)
        processed.append(processed_tokens(batch))
        unique.append(unique_tokens(rows, batch))
        pairs.append(len(rows))
    return {"pairs_per_batch": pairs, "processed_per_batch": processed, "unique_per_batch": unique,
            "processed_unique_ratio": sum(processed) / sum(unique) if unique else None}


def speed_plan(trainer) -> dict[str, Any] | None:
    """Our trainer's speed plan as plain fields; None for a trainer without one."""
    speed = getattr(trainer, "speed", None)
    fields = ("prefix_sharing", "padding_free", "loss_chunk_size", "attention", "fallbacks")
    return None if speed is None else {name: getattr(speed, name, None) for name in fields}


def describe_trainer(trainer) -> dict[str, Any]:
    """The settings that must match across implementations, read back from the live trainer."""
    args, model, collator = trainer.args, trainer.model, trainer.data_collator
    first = next(model.parameters())
    return {
        "trainer_class": type(trainer).__module__ + "." + type(trainer).__name__,
        "collator_class": type(collator).__name__,
        "collator": {name: getattr(collator, name) for name in ("prefix_sharing", "padding_free", "pack_length")
                     if hasattr(collator, name)},
        "speed_plan": speed_plan(trainer), "train_rows": len(trainer.train_dataset),
        "params": sum(p.numel() for p in model.parameters()), "matmul_params": matmul_params(model),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "dtype": str(first.dtype), "torch_threads": torch.get_num_threads(), "device": str(first.device),
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "args": {name: str(getattr(args, name)) for name in (
            "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "optim",
            "lr_scheduler_type", "max_grad_norm", "max_steps", "bf16", "gradient_checkpointing",
            "train_sampling_strategy", "seed", "beta", "max_length", "max_prompt_length", "prefix_sharing",
            "padding_free", "loss_chunk_size", "merlina_beta", "merlina_prefix_sharing", "merlina_padding_free",
            "merlina_loss_chunk_size") if hasattr(args, name)},
    }
