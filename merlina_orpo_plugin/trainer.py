"""The ORPO trainer: a thin `transformers.Trainer` over `forward.py`, `losses.py` and `metrics.py`.

`ORPOTrainerMixin` holds all ORPO behaviour and only assumes a `transformers.Trainer` underneath,
so the Axolotl plugin puts the same logic on Axolotl's own trainer base. Method names, signatures and
return conventions follow TRL's `trl.experimental.orpo.ORPOTrainer` so subclasses written for it port.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from . import losses as L
from .collator import ORPODataCollator
from .config import ORPOConfig
from .data import prepare_preference_dataset
from .accumulation import loss_scales, window_totals
from .forward import FusedLoss, ORPOForwardOutput, concatenated_forward
from .generation import log_generations
from .metrics import MetricStore, batch_metrics
from .model_setup import check_4bit_cpu_layers, prepare_model
from .options import ORPOSettings, settings_from
from .schedules import beta_at, is_scheduled
from .speed import SpeedPlan, plan_speed


class ORPOTrainerMixin:
    """ORPO loss, metrics and exact gradient accumulation for any `transformers.Trainer` subclass.

    Call `_setup_orpo` at the end of ``__init__``. ``self.beta`` is read on every step, so a
    subclass may change it (a beta schedule) before calling ``super().compute_loss``.
    """

    _tag_names = ["orpo", "merlina-orpo"]

    def _setup_orpo(self, settings: ORPOSettings) -> None:
        """Loss settings, and the speed plan (`speed.plan_speed`) decided once for this model.

        The collators are rebuilt from the plan here, before any dataloader exists: an
        `ORPODataCollator` passed in (Axolotl builds its own before the model's plan is known) is
        replaced by a copy in the planned layout; any other collator is kept as it is.
        """
        self.settings = settings
        self.beta = settings.beta
        self._beta_scheduled = is_scheduled(settings.beta_schedule, settings.beta_warmup_steps)
        self.nll_include_prompt = settings.nll_include_prompt
        check_4bit_cpu_layers(self.model, will_evaluate=self.eval_dataset is not None)
        self.speed: SpeedPlan = plan_speed(
            self.model,
            prefix_sharing=settings.prefix_sharing,
            padding_free=settings.padding_free,
            loss_chunk_size=settings.loss_chunk_size,
            max_length=settings.max_length,
            flex_attention=settings.flex_attention,
            device_type=self.args.device.type,
        )
        self.data_collator = self._planned(self.data_collator)
        if hasattr(self, "eval_data_collator"):  # Axolotl's trainer keeps a separate one
            self.eval_data_collator = self._planned(self.eval_data_collator)
        config = getattr(self.model, "config", None)
        self.aux_loss_enabled = bool(getattr(config, "output_router_logits", False))
        self.aux_loss_coef = float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)
        self._orpo_metrics = MetricStore()
        self._orpo_mode = "train"
        self._orpo_window: tuple[torch.Tensor, float] | None = None
        # The loss is ours, not the model's: let Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False

    def _planned(self, collator):
        if isinstance(collator, ORPODataCollator):
            return dataclasses.replace(collator, layout=self.speed.layout)
        return collator

    # --- TRL-compatible building blocks -------------------------------------------------------

    @staticmethod
    def get_batch_logps(
        logits: torch.Tensor,
        labels: torch.Tensor,
        average_log_prob: bool = True,
        is_encoder_decoder: bool = False,
    ) -> torch.Tensor:
        """``[B]`` mean (or sum) log-prob of the tokens of ``labels`` that are not ``-100``."""
        return L.sequence_logps(logits, labels, average_log_prob=average_log_prob, shift=not is_encoder_decoder)

    def odds_ratio_loss(self, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor):
        """TRL's convention: ``(losses [B], chosen_rewards [B], rejected_rewards [B], mean ratio, mean log_odds)``.

        ``losses = beta * logsigmoid(log_odds)`` is <= 0; the total loss subtracts its mean.
        """
        losses, chosen_rewards, rejected_rewards, ratio, log_odds = L.odds_ratio_loss(
            policy_chosen_logps, policy_rejected_logps, self.beta
        )
        return losses, chosen_rewards, rejected_rewards, ratio.mean(), log_odds.mean()

    def concatenated_forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ORPOForwardOutput:
        """One forward over chosen and rejected rows: ``(chosen_logps, rejected_logps, nll_loss, ...)``."""
        return self._forward(model, batch)

    def _forward(self, model, batch, fused: FusedLoss | None = None) -> ORPOForwardOutput:
        return concatenated_forward(
            model,
            batch,
            nll_include_prompt=self.nll_include_prompt,
            output_router_logits=self.aux_loss_enabled,
            loss_chunk_size=self.speed.loss_chunk_size,
            fused=fused,
        )

    # --- Trainer hooks ------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """ORPO loss ``nll - mean(beta * logsigmoid(log_odds))`` (+ router loss for MoE models).

        With ``return_outputs=True`` returns ``(loss, outputs)`` where ``outputs`` holds tensors:
        per pair ``chosen_rewards``, ``rejected_rewards``, ``reward_margin``, ``log_odds``; per batch
        ``nll_loss``, ``or_loss`` (the odds-ratio term as added to the loss) and ``log_odds_ratio``
        (mean logsigmoid of the log odds).
        """
        nll_scale, or_scale = self._loss_scales(inputs, num_items_in_batch)
        fused = None
        if self._orpo_mode == "train" and torch.is_grad_enabled():  # the fused chunked loss, where it applies
            fused = FusedLoss(self.beta, nll_scale, or_scale)
        forward = self._forward(model, inputs, fused)
        or_losses, chosen_rewards, rejected_rewards, ratio, log_odds = L.odds_ratio_loss(
            forward.chosen_logps, forward.rejected_logps, self.beta
        )
        nll_term, or_term = forward.nll_sum * nll_scale, -or_losses.sum() * or_scale
        loss = nll_term + or_term if forward.loss is None else forward.loss  # fused: the terms are detached
        if self.aux_loss_enabled and forward.aux_loss is not None:
            loss = loss + self.aux_loss_coef * forward.aux_loss.to(loss.device)
        metrics = batch_metrics(forward, nll_term, or_term, chosen_rewards, rejected_rewards, ratio, log_odds)
        if self._beta_scheduled:
            metrics["beta"] = torch.full((), float(self.beta), device=loss.device)  # a fill, not a host copy
        self._orpo_metrics.add(self._orpo_mode, metrics)
        if not return_outputs:
            return loss
        outputs = {
            "chosen_rewards": chosen_rewards,
            "rejected_rewards": rejected_rewards,
            "reward_margin": chosen_rewards - rejected_rewards,
            "nll_loss": forward.nll_loss.detach(),
            "or_loss": -or_losses.detach().mean(),
            "log_odds_ratio": ratio.detach().mean(),
            "log_odds": log_odds.detach(),
        }
        return loss, outputs

    def _loss_scales(self, batch, num_items_in_batch):
        """``(nll_scale, or_scale)`` of this micro-batch (`accumulation.loss_scales`): its share of the
        accumulation window in training, its own means otherwise."""
        window = self._orpo_window if num_items_in_batch is not None and self._orpo_mode == "train" else None
        steps = getattr(self, "current_gradient_accumulation_steps", 1)
        return loss_scales(batch, self.nll_include_prompt, window, steps)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            self._orpo_window = None
            return batch_samples, None
        totals, processes = window_totals(batch_samples, self.nll_include_prompt, device), self.accelerator.num_processes
        factor = 1.0
        if self.args.average_tokens_across_devices and processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
            factor = float(processes)  # DDP averages gradients over ranks
        self._orpo_window = (totals.float(), factor)
        return batch_samples, totals[0]

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._refresh_beta()  # before compute_loss, so a subclass that sets self.beta there still wins
        return super().training_step(model, inputs, num_items_in_batch)

    def _refresh_beta(self) -> None:
        """Beta for the coming optimizer step (`schedules.beta_at`); a fixed beta is left alone."""
        if self._beta_scheduled:
            s = self.settings
            self.beta = beta_at(self.state.global_step, self.state.max_steps, beta=s.beta, beta_end=s.beta_end,
                                schedule=s.beta_schedule, warmup_steps=s.beta_warmup_steps)

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager(), self._mode("eval"):
            loss = self.compute_loss(model, inputs)
        # TRL returns two logits means as "predictions"; they carry nothing a compute_metrics could
        # use, so only the loss is returned and the ORPO metrics reach the eval logs directly.
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        self._refresh_beta()  # evaluation uses the value the next training step would use
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        for name, value in self._orpo_metrics.pop("eval", self.accelerator).items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        if self.settings.generate_during_eval:
            log_generations(self, dataloader.dataset, metric_key_prefix)
        return output

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: add the ORPO metrics accumulated since the last one
            logs.update(self._orpo_metrics.pop("train", self.accelerator))
        return super().log(logs, *args, **kwargs)

    def store_metrics(self, metrics: dict[str, torch.Tensor], train_eval: str = "train") -> None:
        """Add metric tensors to be averaged into the next log (TRL's name for this hook)."""
        self._orpo_metrics.add(train_eval, {k: torch.as_tensor(v) for k, v in metrics.items()})

    @contextmanager
    def _mode(self, mode: str):
        previous, self._orpo_mode = self._orpo_mode, mode
        try:
            yield
        finally:
            self._orpo_mode = previous


class MerlinaORPOTrainer(ORPOTrainerMixin, Trainer):
    """ORPO (arXiv:2403.07691) on `transformers.Trainer`, no TRL import.

    Takes TRL's ``ORPOTrainer`` arguments. Datasets may be in any layout `prepare_preference_dataset`
    accepts (standard, conversational, implicit prompt, tokenised); they are validated and tokenised
    here, before training starts. ``peft_config`` wraps the model with PEFT (k-bit models are prepared
    for QLoRA first).
    """

    def __init__(
        self,
        model=None,
        args: ORPOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        model_init=None,
        callbacks=None,
        optimizers=(None, None),
        preprocess_logits_for_metrics=None,
        peft_config=None,
        compute_metrics=None,
        **kwargs: Any,
    ):
        if args is None:
            args = ORPOConfig(output_dir="orpo_output")
        if not isinstance(args, ORPOConfig):
            raise TypeError(f"`args` must be a merlina_orpo_plugin.ORPOConfig, got {type(args).__name__}")
        if processing_class is None:
            raise ValueError("`processing_class` (the tokenizer) is required to tokenise the preference pairs")
        model = prepare_model(model, args, peft_config)
        seq2seq = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        train_dataset = self._tokenise(train_dataset, processing_class, args, "train_dataset", seq2seq)
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                name: self._tokenise(ds, processing_class, args, f"eval_dataset[{name!r}]", seq2seq)
                for name, ds in eval_dataset.items()
            }
        else:
            eval_dataset = self._tokenise(eval_dataset, processing_class, args, "eval_dataset", seq2seq)
        if data_collator is None:
            data_collator = ORPODataCollator(processing_class, pad_token_id=args.padding_value)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            **kwargs,
        )
        self._setup_orpo(settings_from(args))
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    @staticmethod
    def _tokenise(dataset, tokenizer, args: ORPOConfig, source: str, encoder_decoder: bool):
        if dataset is None:
            return None
        from accelerate import PartialState

        # The main process tokenises first and fills the datasets cache; the others read it.
        with PartialState().main_process_first():
            tokenised, _stats = prepare_preference_dataset(
                dataset,
                tokenizer,
                max_length=args.max_length,
                max_prompt_length=args.max_prompt_length,
                max_completion_length=args.max_completion_length,
                num_proc=args.dataset_num_proc,
                source=source,
                encoder_decoder=encoder_decoder,
            )
        return tokenised
