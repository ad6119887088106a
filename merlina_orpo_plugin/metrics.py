"""ORPO metrics under TRL's names, accumulated per step and averaged across processes at log time."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .compute.objective import ORPOStep

#: Logged names, TRL's (`rl: orpo` dashboards are built on them) plus `or_loss` and
#: `tokens/processed_per_unique` (positions the model ran per distinct token: TRL's layout computes
#: each prompt twice and its padding; the shared, packed layout is close to 1).
METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "nll_loss",
    "log_odds_ratio",
    "log_odds_chosen",
    "or_loss",
    "tokens/processed_per_unique",
)


def batch_metrics(step: ORPOStep) -> dict[str, torch.Tensor]:
    """Batch means of every logged metric, detached scalars, in `METRIC_NAMES` order.

    ``nll_loss`` and ``or_loss`` are the two terms as they enter the loss (``or_loss`` is
    ``-beta * mean(logsigmoid(log_odds))``), so ``loss == nll_loss + or_loss`` (plus the router
    loss for MoE models); under gradient accumulation or several processes they are each
    micro-batch's share of the window, so their average over the window is the window's value.
    """
    terms, scores = step.terms, step.scores
    device = terms.nll_term.device  # every metric is made on the loss's device (a CPU one breaks the stack in `pop`)
    unique = torch.as_tensor(scores.unique_tokens, device=device).clamp(min=1)
    values = {
        "rewards/chosen": terms.chosen_rewards,
        "rewards/rejected": terms.rejected_rewards,
        "rewards/accuracies": (terms.chosen_rewards > terms.rejected_rewards).float(),
        "rewards/margins": terms.chosen_rewards - terms.rejected_rewards,
        "logps/chosen": terms.chosen_logps,
        "logps/rejected": terms.rejected_logps,
        "logits/chosen": scores.logits_mean[0],
        "logits/rejected": scores.logits_mean[1],
        "nll_loss": terms.nll_term,
        "log_odds_ratio": terms.ratio,
        "log_odds_chosen": terms.log_odds,
        "or_loss": terms.or_term,
        "tokens/processed_per_unique": scores.processed_tokens / unique,
    }
    return {name: values[name].detach().to(device).float().mean() for name in METRIC_NAMES}


def trl_outputs(step: ORPOStep) -> dict[str, torch.Tensor]:
    """``compute_loss``'s ``outputs`` under TRL's names: per pair ``chosen_rewards``, ``rejected_rewards``,
    ``reward_margin``, ``log_odds``; per batch ``nll_loss`` (token mean), ``or_loss`` (the odds-ratio term
    as added to the loss, ``-mean(or_losses)``), ``log_odds_ratio`` (mean logsigmoid of the log odds),
    ``logits/chosen`` and ``logits/rejected`` (as logged; what TRL's ``prediction_step`` reads)."""
    terms, scores = step.terms, step.scores
    return {
        "chosen_rewards": terms.chosen_rewards,
        "rejected_rewards": terms.rejected_rewards,
        "reward_margin": terms.chosen_rewards - terms.rejected_rewards,
        "nll_loss": scores.nll_sum / scores.nll_tokens.clamp(min=1),
        "or_loss": -terms.or_losses.mean(),
        "log_odds_ratio": terms.ratio.mean(),
        "log_odds": terms.log_odds,
        "logits/chosen": scores.logits_mean[0].mean(),
        "logits/rejected": scores.logits_mean[1].mean(),
    }


class MetricStore:
    """Sums of per-step metric means by mode ("train"/"eval"), kept on the device until logged.

    TRL calls ``.item()`` on every metric of every step (a device sync each); here the values stay
    tensors and one all-reduce per log averages them across processes.
    """

    def __init__(self) -> None:
        self._sums: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        self._steps: dict[str, int] = defaultdict(int)

    def add(self, mode: str, metrics: dict[str, torch.Tensor]) -> None:
        sums = self._sums[mode]
        for name, value in metrics.items():
            value = value.detach().float()
            sums[name] = sums[name] + value if name in sums else value
        self._steps[mode] += 1

    def state_dict(self) -> dict:
        """The sums (on the CPU) and step counts not yet logged, for a checkpoint (`checkpoints`)."""
        return {mode: {"sums": {name: value.cpu() for name, value in sums.items()}, "steps": self._steps[mode]}
                for mode, sums in self._sums.items()}

    def load_state_dict(self, state: dict, device) -> None:
        """Back to what `state_dict` saved, the sums on ``device``."""
        self._sums.clear()
        self._steps.clear()
        for mode, held in state.items():
            self._sums[mode] = {name: value.to(device) for name, value in held["sums"].items()}
            self._steps[mode] = held["steps"]

    def pop(self, mode: str, accelerator=None) -> dict[str, float]:
        """Mean of each metric over the steps since the last pop, averaged across processes."""
        means = self.pop_tensor(mode, accelerator)
        return {} if means is None else dict(zip(means[0], means[1].tolist()))

    def pop_tensor(self, mode: str, accelerator=None) -> tuple[list[str], torch.Tensor] | None:
        """``(names, means)`` with the means one tensor on one device, before the single ``.tolist()``.

        Metrics a subclass stored may sit elsewhere (a Python float becomes a CPU tensor): all go to
        the accelerator's device (the reduction needs them there), else to the first metric's.
        """
        sums, steps = self._sums.pop(mode, {}), self._steps.pop(mode, 0)
        if not steps:
            return None
        names = list(sums)
        device = accelerator.device if accelerator is not None else sums[names[0]].device
        means = torch.stack([sums[name].to(device) for name in names]) / steps
        if accelerator is not None and accelerator.num_processes > 1:
            means = accelerator.reduce(means, reduction="mean")
        return names, means
