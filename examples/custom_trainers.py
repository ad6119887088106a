"""Three ways to customise `MerlinaORPOTrainer`, shown in the README and run as tests.

Each overrides `compute_loss` with TRL's signature, so the same subclass works for training and
for evaluation (`prediction_step` goes through `compute_loss` too).
"""

from __future__ import annotations

import torch

from merlina_orpo_plugin import MerlinaORPOTrainer


class BetaScheduleORPOTrainer(MerlinaORPOTrainer):
    """Ramp the odds-ratio weight from `beta_start` to `beta_end` over training: `self.beta` is read every step."""

    beta_start: float = 0.05
    beta_end: float = 0.25

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        progress = self.state.global_step / max(1, self.state.max_steps)
        self.beta = self.beta_start + (self.beta_end - self.beta_start) * progress
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


class ExtraMetricsORPOTrainer(MerlinaORPOTrainer):
    """Log the widest reward margin of each batch next to TRL's metrics, from `return_outputs=True`."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        mode = "train" if model.training else "eval"
        self.store_metrics({"rewards/margin_max": outputs["reward_margin"].max()}, train_eval=mode)
        return (loss, outputs) if return_outputs else loss


class ConfidenceWeightedORPOTrainer(MerlinaORPOTrainer):
    """Weight each pair's odds-ratio term by how wrong the model still is about it.

    Built from the two public pieces: `concatenated_forward` (one forward, mean log-probs and the
    NLL) and `odds_ratio_loss` (per-pair ``beta * logsigmoid(log_odds)``).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen_logps, rejected_logps, nll_loss = self.concatenated_forward(model, inputs)[:3]
        losses, chosen_rewards, rejected_rewards, _, _ = self.odds_ratio_loss(chosen_logps, rejected_logps)
        # losses = beta * logsigmoid(log_odds): exp(losses / beta) is P(chosen preferred); weight the doubtful pairs up.
        weights = 2.0 * (1.0 - torch.exp(losses.detach() / self.beta))
        loss = nll_loss - (weights * losses).mean()
        if return_outputs:
            return loss, {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards, "weights": weights}
        return loss
