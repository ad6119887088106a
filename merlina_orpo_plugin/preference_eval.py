"""Held-out preference accuracy: how often a model scores the chosen answer above the rejected one.

A pair counts as preferred when the chosen completion's mean per-token log-probability beats the
rejected one's: ``log P_theta(y|x)``, the length-normalised likelihood ORPO's odds ratio is built
from (arXiv:2403.07691). Scoring takes pairs tokenised by the training pipeline and runs them
through the trainer's collator and forward, in the padded layout on the model's full logits (the
log-probs the speed features give too: tests/test_speed_equivalence.py). Used by ``axolotl
orpo-eval`` (`integration/eval_cli.py`) and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batch.collator import ORPODataCollator
from .compute.forward import concatenated_forward
from .speed import plan_speed


@dataclass(frozen=True)
class PreferenceScores:
    """Per-pair mean completion log-probs, in the input order, and their summary."""

    chosen_logps: list[float]
    rejected_logps: list[float]

    @property
    def pairs(self) -> int:
        return len(self.chosen_logps)

    @property
    def correct(self) -> int:
        # Strictly greater: a tie (identical answers) is not a preference.
        return sum(c > r for c, r in zip(self.chosen_logps, self.rejected_logps))

    def summary(self) -> dict:
        def mean(values) -> float:
            values = list(values)
            return sum(values) / len(values) if values else float("nan")

        return {
            "pairs": self.pairs,
            "correct": self.correct,
            "accuracy": self.correct / self.pairs if self.pairs else float("nan"),
            "mean_margin": mean(c - r for c, r in zip(self.chosen_logps, self.rejected_logps)),
            "mean_chosen_logp": mean(self.chosen_logps),
            "mean_rejected_logp": mean(self.rejected_logps),
        }


@torch.no_grad()
def score_tokenised(model: torch.nn.Module, rows: list[dict], pad_token_id: int, *, batch_size: int = 8) -> PreferenceScores:
    """Mean completion log-probs of every tokenised pair's chosen and rejected answer under ``model``.

    ``rows`` hold ``prompt_input_ids`` / ``chosen_input_ids`` / ``rejected_input_ids``, as the data
    pipeline writes them. Pairs are batched by length (less padding, same numbers: padding is
    masked out) and returned in input order. The model is put in eval mode and left there.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    # The padded layout, or the encoder-decoder one: the trainer's own plan with every speed feature off.
    layout = plan_speed(model, prefix_sharing=False, padding_free=False, loss_chunk_size=0, max_length=None).layout
    collate = ORPODataCollator(pad_token_id=pad_token_id, layout=layout)
    order = sorted(range(len(rows)), key=lambda i: _longest(rows[i]))
    chosen, rejected = [0.0] * len(rows), [0.0] * len(rows)
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = collate([rows[i] for i in indices]).to(device)
        out = concatenated_forward(model, batch)
        for i, c, r in zip(indices, out.chosen_logps.tolist(), out.rejected_logps.tolist(), strict=True):
            chosen[i], rejected[i] = c, r
    return PreferenceScores(chosen, rejected)


def _longest(row: dict) -> int:
    return len(row["prompt_input_ids"]) + max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))
