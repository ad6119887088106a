"""The peer to beat: TRL 1.9's ORPO trainer with Liger-Kernel's fused linear ORPO loss, as a
speed-conscious user writes it. Liger's own ``LigerORPOTrainer`` does not run with TRL 1.9 (it imports the
removed ``trl.trainer.ORPOTrainer`` and passes a removed argument), so this is Liger 0.8.1's trainer body
on ``trl.experimental.orpo.ORPOTrainer``, the decoder run for the last hidden states, no FSDP redirection."""

from __future__ import annotations

import torch
from liger_kernel.chunked_loss import LigerFusedLinearORPOLoss
from trl.experimental.orpo import ORPOTrainer


class LigerORPOTrainer(ORPOTrainer):
    #: ``LigerFusedLinearORPOLoss(compiled=...)``: Liger's default (True) unless the harness says otherwise.
    liger_compiled = True

    def concatenated_forward(self, model, batch):
        concatenated = self.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=self.padding_value,
                                                device=self.accelerator.device)
        labels = torch.where(concatenated["concatenated_attention_mask"] == 1,
                             concatenated["concatenated_input_ids"], -100)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: the wrapped LM
        outputs = base.model(concatenated["concatenated_input_ids"],
                             attention_mask=concatenated["concatenated_attention_mask"], use_cache=False)
        loss_fn = LigerFusedLinearORPOLoss(ignore_index=-100, beta=self.beta, compiled=self.liger_compiled)
        return loss_fn(base.lm_head.weight, outputs.last_hidden_state[:, :-1],
                       concatenated["concatenated_labels"][:, 1:], base.lm_head.bias, nll_target=labels[:, 1:])

    def get_batch_loss_metrics(self, model, batch, train_eval="train"):
        loss, aux = self.concatenated_forward(model, batch)
        chosen_logps, rejected_logps, chosen_logits, rejected_logits, nll_loss = aux[:5]
        chosen_rewards, rejected_rewards, log_odds_ratio, log_odds_chosen = aux[5:]
        prefix = "eval_" if train_eval == "eval" else ""
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps/rejected": rejected_logps.detach().mean(),
            "logps/chosen": chosen_logps.detach().mean(),
            "logits/rejected": rejected_logits.detach().mean(),
            "logits/chosen": chosen_logits.detach().mean(),
            "nll_loss": nll_loss.detach().mean(),
            "log_odds_ratio": log_odds_ratio,
            "log_odds_chosen": log_odds_chosen,
        }
        return loss, {prefix + k: v.item() for k, v in metrics.items()}
