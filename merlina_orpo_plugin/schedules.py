"""Beta schedules: the odds-ratio weight as a pure function of the optimizer step.

ORPO has one knob, beta (lambda in the paper); people sweep it run by run because no trainer lets it
move. Here it can: a linear warmup from 0 to ``beta`` over ``warmup_steps``, then ``constant`` (beta),
``linear`` or ``cosine`` from ``beta`` to ``beta_end`` over the remaining optimizer steps, the same
shapes `transformers` gives the learning rate. ``step`` is the number of optimizer steps already taken
(`TrainerState.global_step`), so the value survives a resume from a checkpoint exactly.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def beta_at(
    step: int,
    total_steps: int,
    *,
    beta: float,
    beta_end: float | None = None,
    schedule: str = "constant",
    warmup_steps: int = 0,
) -> float:
    """Beta for the optimizer step that follows ``step`` completed ones, of ``total_steps`` in all.

    Warmup (``step < warmup_steps``): ``beta * step / warmup_steps``, as transformers warms up the
    learning rate. Then with progress ``p = (step - warmup_steps) / (total_steps - warmup_steps)``,
    clipped to [0, 1]: ``constant`` gives ``beta``; ``linear`` ``beta + (beta_end - beta) * p``;
    ``cosine`` ``beta_end + (beta - beta_end) * (1 + cos(pi * p)) / 2``. ``beta_end`` None is ``beta``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"beta schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if step < warmup_steps:
        return beta * step / warmup_steps
    end = beta if beta_end is None else beta_end
    if schedule == "constant":
        return beta
    progress = min(max((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0), 1.0)
    if schedule == "linear":
        return beta + (end - beta) * progress
    return end + (beta - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def is_scheduled(schedule: str, warmup_steps: int) -> bool:
    """Whether beta moves at all (a constant schedule without warmup is today's fixed beta)."""
    return schedule != "constant" or warmup_steps > 0
