"""ORPO metrics under TRL's names, accumulated per step and averaged across processes at log time."""

from __future__ import annotations

from collections import defaultdict

import torch

from .compute.forward import ORPOForwardOutput

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


def batch_metrics(
    forward: ORPOForwardOutput,
    nll_term: torch.Tensor,
    or_term: torch.Tensor,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    ratio: torch.Tensor,
    log_odds: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Batch means of every logged metric, detached scalars, in `METRIC_NAMES` order.

    ``nll_loss`` and ``or_loss`` are the two terms as they enter the loss (``or_loss`` is
    ``-beta * mean(logsigmoid(log_odds))``), so ``loss == nll_loss + or_loss`` (plus the router
    loss for MoE models); under gradient accumulation or several processes they are each
    micro-batch's share of the window, so their average over the window is the window's value.
    """
    device = nll_term.device  # every metric is made on the loss's device (a CPU one breaks the stack in `pop`)
    unique = torch.as_tensor(forward.unique_tokens, device=device).clamp(min=1)
    values = {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": forward.chosen_logps,
        "logps/rejected": forward.rejected_logps,
        "logits/chosen": forward.chosen_logits_mean,
        "logits/rejected": forward.rejected_logits_mean,
        "nll_loss": nll_term,
        "log_odds_ratio": ratio,
        "log_odds_chosen": log_odds,
        "or_loss": or_term,
        "tokens/processed_per_unique": forward.processed_tokens / unique,
    }
    return {name: values[name].detach().to(device).float().mean() for name in METRIC_NAMES}


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
