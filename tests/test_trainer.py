"""MerlinaORPOTrainer's training features on a tiny Llama and the project's ShareGPT pairs, CPU, a few steps each.

Checks against the trainer itself run another way: gradient accumulation against one big batch,
LoRA/QLoRA against the frozen base weights, checkpointing against no checkpointing, the MoE
router loss against the loss recomposed from its parts, the README's customisation examples.
"""

from __future__ import annotations

import sys

import pytest
import torch
from datasets import Dataset

from testkit import QUANTIZABLE_SIZES, REPO, orpo_args, single_turn_pairs, tiny_llama
from merlina_orpo_plugin import MerlinaORPOTrainer, create_orpo_trainer

sys.path.insert(0, str(REPO / "examples"))
import custom_trainers  # noqa: E402  (the README's examples, run unchanged)


@pytest.fixture(scope="module")
def pairs():
    return Dataset.from_list(single_turn_pairs(8))


def _trained_params(trainer) -> dict[str, torch.Tensor]:
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_create_orpo_trainer_trains_and_logs_trl_metric_names(tmp_path, tokenizer, pairs):
    trainer = create_orpo_trainer(tiny_llama(), tokenizer, pairs, eval_dataset=pairs, orpo_config=orpo_args(tmp_path))
    trainer.train()
    logged = [log for log in trainer.state.log_history if "loss" in log]
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                 "logps/rejected", "logits/chosen", "logits/rejected", "nll_loss", "log_odds_ratio",
                 "log_odds_chosen", "or_loss"):
        assert all(name in log for log in logged), name
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_rewards/accuracies", "eval_or_loss", "eval_log_odds_chosen"} <= metrics.keys()
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_nll_loss"] + metrics["eval_or_loss"], rel=1e-5)


def _one_sgd_step(tmp_path, tokenizer, pairs, trainer_cls=MerlinaORPOTrainer, **overrides):
    args = orpo_args(tmp_path, optim="sgd", learning_rate=1.0, max_steps=1, max_grad_norm=0.0, **overrides)
    model = tiny_llama(seed=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = trainer_cls(model=model, args=args, train_dataset=pairs.select(range(4)), processing_class=tokenizer)
    after = _trained_params(trainer)
    return {n: before[n] - after[n] for n in before}, trainer.state.log_history[0]


class _PerMicroBatchMeanTrainer(MerlinaORPOTrainer):
    """TRL's accumulation: every micro-batch's token mean weighs the same (no window normalisation)."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        return batch_samples, None


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tokenizer, pairs):
    """4 micro-batches of 1 pair give the same SGD step and logged loss as 1 batch of 4 pairs.

    The pairs have different lengths, so averaging per-micro-batch token means (TRL) does not:
    that variant is shown to miss the same tolerance, so the check can fail.
    """
    big, big_loss = _one_sgd_step(tmp_path / "big", tokenizer, pairs, per_device_train_batch_size=4)
    accumulated, acc_loss = _one_sgd_step(
        tmp_path / "acc", tokenizer, pairs, per_device_train_batch_size=1, gradient_accumulation_steps=4
    )
    naive, _ = _one_sgd_step(
        tmp_path / "naive", tokenizer, pairs, _PerMicroBatchMeanTrainer,
        per_device_train_batch_size=1, gradient_accumulation_steps=4,
    )
    for name in ("loss", "nll_loss", "or_loss", "log_odds_ratio"):  # the logged window values agree too
        assert acc_loss[name] == pytest.approx(big_loss[name], rel=1e-5), name
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-4, atol=1e-7, msg=name)
    worst = max(((naive[n] - big[n]).abs().max() / big[n].abs().max().clamp(min=1e-12)).item() for n in big)
    assert worst > 1e-3, "per-micro-batch means should visibly differ for pairs of different lengths"


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")


def _assert_only_adapters_moved(before: dict, after: dict):
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved, "nothing trained"
    assert all("lora_" in n for n in moved), sorted(n for n in moved if "lora_" not in n)
    assert any("lora_B" in n for n in moved)


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_lora_trains_only_adapter_weights(tmp_path, tokenizer, pairs, gradient_checkpointing):
    trainer = MerlinaORPOTrainer(
        model=tiny_llama(),
        args=orpo_args(tmp_path, gradient_checkpointing=gradient_checkpointing),
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=_lora_config(),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    _assert_only_adapters_moved(before, _trained_params(trainer))


def test_gradient_checkpointing_gives_the_same_losses(tmp_path, tokenizer, pairs):
    losses = []
    for gc in (False, True):
        trainer = MerlinaORPOTrainer(
            model=tiny_llama(), args=orpo_args(tmp_path / str(gc), gradient_checkpointing=gc),
            train_dataset=pairs, processing_class=tokenizer,
        )
        trainer.train()
        losses.append([log["loss"] for log in trainer.state.log_history if "loss" in log])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_qlora_4bit_trains_adapters_on_cpu(tmp_path, tokenizer, pairs):
    model = _load_4bit(tmp_path, **QUANTIZABLE_SIZES)
    assert model.is_loaded_in_4bit
    trainer = MerlinaORPOTrainer(
        model=model, args=orpo_args(tmp_path / "out"), train_dataset=pairs,
        processing_class=tokenizer, peft_config=_lora_config(),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    after = _trained_params(trainer)
    _assert_only_adapters_moved(before, after)
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in trainer.state.log_history if "loss" in log)


def _load_4bit(tmp_path, **sizes):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_llama(**sizes).save_pretrained(tmp_path / "base")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quant, device_map="cpu")


def test_4bit_layers_the_packed_cpu_kernel_refuses_are_named_before_training(tmp_path, tokenizer, pairs):
    """bitsandbytes evaluates 4-bit layers on AVX512-BF16 CPUs with a kernel that needs output sizes in
    multiples of 32 (issue 13). Which kernel runs depends on the CPU, so the layers are marked as on such
    a CPU; a model whose k/v projections are 2 heads x 8 = 16 wide is refused, by layer name, when the
    run will evaluate, and passes with sizes in multiples of 128."""
    from merlina_orpo_plugin.model.setup import unpackable_4bit_layers

    def on_such_a_cpu(model):
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = True
        return model

    narrow = on_such_a_cpu(_load_4bit(tmp_path / "narrow", hidden_size=64, intermediate_size=128, head_dim=8))
    assert "model.layers.0.self_attn.k_proj (64 -> 16)" in unpackable_4bit_layers(narrow)
    with pytest.raises(ValueError, match=r"k_proj \(64 -> 16\).*multiples of 128"):
        MerlinaORPOTrainer(model=narrow, args=orpo_args(tmp_path / "a"), train_dataset=pairs, eval_dataset=pairs,
                           processing_class=tokenizer, peft_config=_lora_config())
    wide = on_such_a_cpu(_load_4bit(tmp_path / "wide", **QUANTIZABLE_SIZES))
    assert unpackable_4bit_layers(wide) == []


def test_bf16_autocast_trains(tmp_path, tokenizer, pairs):
    trainer = MerlinaORPOTrainer(
        model=tiny_llama(), args=orpo_args(tmp_path, bf16=True), train_dataset=pairs, processing_class=tokenizer
    )
    trainer.train()
    logged = [log for log in trainer.state.log_history if "loss" in log]
    assert logged and all(torch.isfinite(torch.tensor([log["loss"], log["log_odds_chosen"]])).all() for log in logged)


def test_dropout_is_disabled_by_default(tmp_path, tokenizer, pairs):
    model = tiny_llama(attention_dropout=0.5)
    trainer = MerlinaORPOTrainer(model=model, args=orpo_args(tmp_path), train_dataset=pairs, processing_class=tokenizer)
    trainer.model.train()
    ids = torch.tensor([tokenizer("a test of dropout")["input_ids"]])
    assert torch.equal(trainer.model(ids).logits, trainer.model(ids).logits)
    kept = MerlinaORPOTrainer(
        model=tiny_llama(attention_dropout=0.5), args=orpo_args(tmp_path, disable_dropout=False),
        train_dataset=pairs, processing_class=tokenizer,
    )
    kept.model.train()
    assert not torch.equal(kept.model(ids).logits, kept.model(ids).logits)


def test_trust_remote_code_is_a_loading_option_a_loaded_model_ignores(tmp_path, tokenizer, pairs):
    """`trust_remote_code=True` (as a TRL/HF script sets it) with a model already loaded: nothing to load."""
    trainer = MerlinaORPOTrainer(model=tiny_llama(), args=orpo_args(tmp_path, trust_remote_code=True),
                                 train_dataset=pairs, processing_class=tokenizer)
    assert trainer.args.trust_remote_code
    with pytest.raises(ValueError, match="only applies when `model` is a string"):  # real loading kwargs still refuse
        MerlinaORPOTrainer(model=tiny_llama(), args=orpo_args(tmp_path, model_init_kwargs={"torch_dtype": "float32"}),
                           train_dataset=pairs, processing_class=tokenizer)


def test_moe_router_loss_is_added(tmp_path, tokenizer, pairs):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        output_router_logits=True, router_aux_loss_coef=0.5, pad_token_id=2,
    )
    trainer = MerlinaORPOTrainer(
        model=MixtralForCausalLM(config), args=orpo_args(tmp_path), train_dataset=pairs, processing_class=tokenizer
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader(trainer.train_dataset))))
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        forward = trainer.concatenated_forward(trainer.model, batch)
        losses = trainer.odds_ratio_loss(forward.chosen_logps, forward.rejected_logps)[0]
    assert forward.aux_loss is not None and forward.aux_loss.item() > 0
    expected = forward.nll_loss - losses.mean() + 0.5 * forward.aux_loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_bad_row_fails_before_training(tmp_path, tokenizer, pairs):
    rows = pairs.to_list()
    rows[5]["rejected"] = None  # missing; an empty answer would be legal (the end token alone)
    with pytest.raises(ValueError, match=r"row 5 of train_dataset: `rejected` is None"):
        MerlinaORPOTrainer(
            model=tiny_llama(), args=orpo_args(tmp_path), train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


# --- the README's customisation examples ----------------------------------------------------


def test_beta_schedule_example(tmp_path, tokenizer, pairs):
    trainer = custom_trainers.BetaScheduleORPOTrainer(
        model=tiny_llama(), args=orpo_args(tmp_path, max_steps=4), train_dataset=pairs, processing_class=tokenizer
    )
    trainer.train()
    logged = [log for log in trainer.state.log_history if "loss" in log]
    betas = [log["rewards/chosen"] / log["logps/chosen"] for log in logged]
    assert betas == pytest.approx([0.05, 0.1, 0.15, 0.2], rel=1e-4)  # beta at global_step 0..3 of 4


def test_extra_metrics_example(tmp_path, tokenizer, pairs):
    trainer = custom_trainers.ExtraMetricsORPOTrainer(
        model=tiny_llama(), args=orpo_args(tmp_path), train_dataset=pairs, eval_dataset=pairs,
        processing_class=tokenizer,
    )
    trainer.train()
    logged = [log for log in trainer.state.log_history if "loss" in log]
    assert all(log["rewards/margin_max"] >= log["rewards/margins"] for log in logged)
    assert "eval_rewards/margin_max" in trainer.evaluate()


def test_confidence_weighted_example(tmp_path, tokenizer, pairs):
    trainer = custom_trainers.ConfidenceWeightedORPOTrainer(
        model=tiny_llama(), args=orpo_args(tmp_path), train_dataset=pairs, processing_class=tokenizer
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader(trainer.train_dataset))))
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
        forward = trainer.concatenated_forward(trainer.model, batch)
    c, r = forward.chosen_logps.double(), forward.rejected_logps.double()
    log_odds = (c - r) - (torch.log(-torch.expm1(c)) - torch.log(-torch.expm1(r)))
    p_chosen = torch.sigmoid(log_odds)
    expected = forward.nll_loss.double() - (2 * (1 - p_chosen) * 0.1 * torch.log(p_chosen)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(outputs["weights"].double(), 2 * (1 - p_chosen), rtol=1e-5, atol=1e-6)
    trainer.train()
    assert len([log for log in trainer.state.log_history if "loss" in log]) == 2
