"""The ORPO trainer: a thin `transformers.Trainer` over `compute.forward`, `compute.losses` and `metrics`.

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

from .compute import losses as L
from .batch.collator import ORPODataCollator
from .batch.orpo_batch import ORPOBatch
from .checkpoints import CheckpointStateMixin
from .config import ORPOConfig
from .compute.accumulation import loss_scales, window_totals
from .compute.forward import ORPOForwardOutput, concatenated_forward
from .compute.objective import LossSpec, orpo_objective
from .generation import log_generations
from .metrics import MetricStore, batch_metrics, trl_outputs
from .model.setup import check_4bit_cpu_layers
from .nonfinite import NonFiniteGuard, with_row_index
from .options import ORPOSettings, settings_from
from .schedules import beta_at, is_scheduled
from .speed import SpeedPlan, plan_speed
from .trl_contract import PreparedModelInit, default_collator, default_tokenizer, eval_predictions, model_revision
from .trl_contract import resolve_args, resolve_model, tokenise_datasets


class ORPOTrainerMixin(CheckpointStateMixin):
    """ORPO loss, metrics and exact gradient accumulation for any `transformers.Trainer` subclass.

    Call `_setup_orpo` at the end of ``__init__``. ``self.beta`` is read on every step, so a
    subclass may change it (a beta schedule) before calling ``super().compute_loss``.
    """

    _tag_names = ["orpo", "merlina-orpo"]
    # transformers >= 5.19 and TRL 1.15+: the loss `compute_loss` returns is not yet divided by the
    # accumulation steps (`accumulation.loss_scales` multiplies them back in), so Trainer divides it.
    loss_is_scaled_for_ga = False

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
        self._plan_speed(self.model)
        config = getattr(self.model, "config", None)
        self.aux_loss_enabled = bool(getattr(config, "output_router_logits", False))
        self.aux_loss_coef = float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)
        self._orpo_metrics = MetricStore()
        self._nonfinite = NonFiniteGuard(settings.on_nonfinite, self)
        self.train_dataset = with_row_index(self.train_dataset)  # a NaN's message names the batch's rows
        self._orpo_mode = "train"
        self._orpo_window: tuple[torch.Tensor, float] | None = None
        # The loss is ours, not the model's: let Trainer divide it by the accumulation steps (what
        # transformers < 5.19 reads; newer ones read `loss_is_scaled_for_ga`).
        self.model_accepts_loss_kwargs = False

    def _plan_speed(self, model) -> None:
        s = self.settings
        self.speed: SpeedPlan = plan_speed(model, prefix_sharing=s.prefix_sharing, padding_free=s.padding_free,
                                           loss_chunk_size=s.loss_chunk_size, max_length=s.max_length,
                                           flex_attention=s.flex_attention, device_type=self.args.device.type)
        self.data_collator = self._planned(self.data_collator)
        if hasattr(self, "eval_data_collator"):  # Axolotl's trainer keeps a separate one
            self.eval_data_collator = self._planned(self.eval_data_collator)

    def call_model_init(self, trial=None):
        """A model from ``model_init``; one ``train()`` builds gets its own speed plan (attention kernel)."""
        model = super().call_model_init(trial)
        if hasattr(self, "speed"):
            self._plan_speed(model)
        return model

    def train(self, *args, **kwargs):
        """`Trainer.train`; the model's facts (`model.adapter.ModelFacts`) are found anew in each run."""
        self.speed.facts.clear()
        return super().train(*args, **kwargs)

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

    def concatenated_forward(self, model: nn.Module, batch: ORPOBatch | dict) -> ORPOForwardOutput:
        """One forward over chosen and rejected rows: ``(chosen_logps, rejected_logps, nll_loss, ...)``."""
        return concatenated_forward(
            model,
            batch,
            nll_include_prompt=self.nll_include_prompt,
            output_router_logits=self.aux_loss_enabled,
            loss_chunk_size=self.speed.loss_chunk_size,
            facts=self.speed.model_facts(model),
        )

    # --- Trainer hooks ------------------------------------------------------------------------

    def _prepare_inputs(self, inputs):
        """The batch on this process's device: an `ORPOBatch` moves its tensors itself (Trainer moves
        only tensors, mappings and sequences); any other batch (a dict) goes through Trainer's own."""
        if isinstance(inputs, ORPOBatch):
            return inputs.to(self.args.device)
        return super()._prepare_inputs(inputs)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """ORPO loss ``nll - mean(beta * logsigmoid(log_odds))`` (+ router loss for MoE models), made by
        `compute.objective.orpo_objective` in the mode the speed plan chose (fused in training only).

        With ``return_outputs=True`` returns ``(loss, outputs)`` where ``outputs`` holds tensors under
        TRL's names (`metrics.trl_outputs`): per pair ``chosen_rewards``, ``rejected_rewards``,
        ``reward_margin``, ``log_odds``; per batch ``nll_loss``, ``or_loss`` (the odds-ratio term as added
        to the loss), ``log_odds_ratio`` (mean logsigmoid of the log odds), ``logits/chosen`` and
        ``logits/rejected`` (as logged).
        """
        chunk = self.speed.loss_chunk_size
        spec = LossSpec(self.beta, self.nll_include_prompt, chunk,
                        fused=self._orpo_mode == "train",
                        router_loss_coef=self.aux_loss_coef if self.aux_loss_enabled else None)
        step = orpo_objective(model, inputs, spec, facts=self.speed.model_facts(model),
                              scales=self._loss_scales(inputs, num_items_in_batch))
        loss, metrics = step.loss, batch_metrics(step)
        outputs = trl_outputs(step) if return_outputs else None
        if self._beta_scheduled:
            metrics["beta"] = torch.full((), float(self.beta), device=loss.device)  # a fill, not a host copy
        self._orpo_metrics.add(self._orpo_mode, metrics)
        if self._orpo_mode == "train" and torch.is_grad_enabled():  # checked at the step's end (`nonfinite`)
            self._nonfinite.check_loss(loss, {k: metrics[k] for k in ("nll_loss", "or_loss")}, inputs)
        return (loss, outputs) if return_outputs else loss

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
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._nonfinite.record(loss)  # a non-finite one stops the run or skips the step at the step's end,
        return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)  # and the log says so (`nonfinite`)

    def _get_grad_norm(self, model, grad_norm=None):
        """Trainer's gradient norm, checked before the optimizer steps (`nonfinite.NonFiniteGuard.check_step`)."""
        return self._nonfinite.check_step(model, super()._get_grad_norm(model, grad_norm))

    def _refresh_beta(self) -> None:
        """Beta for the coming optimizer step (`schedules.beta_at`); a fixed beta is left alone."""
        if self._beta_scheduled:
            s = self.settings
            self.beta = beta_at(self.state.global_step, self.state.max_steps, beta=s.beta, beta_end=s.beta_end,
                                schedule=s.beta_schedule, warmup_steps=s.beta_warmup_steps)

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """TRL's ``(loss, logits, labels)``: unless ``prediction_loss_only``, the batch's ``logits/chosen``
        and ``logits/rejected`` means and zeros, what ``compute_metrics`` gets (`trl_contract.eval_predictions`)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager(), self._mode("eval"):
            result = self.compute_loss(model, inputs, return_outputs=not prediction_loss_only)
        if prediction_loss_only:
            return result.detach(), None, None
        loss, outputs = result
        return (loss.detach(), *eval_predictions(outputs, model, ignore_keys, loss.device))

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
            self._nonfinite.on_log(logs)
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

    Takes TRL's ``ORPOTrainer`` arguments with TRL's meaning (`trl_contract`): ``model`` may be a name
    or path (``model_init_kwargs``) or None with ``model_init``; without ``processing_class`` the model's
    tokenizer is loaded. Datasets may be in any layout `prepare_preference_dataset` accepts (standard,
    conversational, implicit prompt, tokenised), ``eval_dataset`` a dict of them; they are validated and
    tokenised here, before training starts. ``peft_config`` wraps the model with PEFT (k-bit models are
    prepared for QLoRA first).
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
        args = resolve_args(args)
        if "compute_loss_func" in kwargs:  # not in TRL's signature either; the loss here is the trainer's own
            raise TypeError("MerlinaORPOTrainer got an unexpected keyword argument 'compute_loss_func'")
        revision = model_revision(model, args)
        model, model_init = resolve_model(model, model_init, args, peft_config)
        if processing_class is None:
            processing_class = default_tokenizer(model, args, revision)
        train_dataset, eval_dataset = tokenise_datasets(train_dataset, eval_dataset, processing_class, args, model)
        data_collator = default_collator(data_collator, processing_class, args)
        model = None if isinstance(model_init, PreparedModelInit) else model  # Trainer calls model_init
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, model_init=model_init,
                         compute_metrics=compute_metrics, callbacks=callbacks, optimizers=optimizers,
                         preprocess_logits_for_metrics=preprocess_logits_for_metrics, **kwargs)
        self._setup_orpo(settings_from(args))
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)
