"""MerlinaORPOTrainer against TRL 1.9's `trl.experimental.orpo.ORPOTrainer`, the oracle for the math.

Same tiny Llama (copied weights), same pairs (the project's rows in LLaMA-Factory's ShareGPT layout,
tests/assets/pairs/sharegpt_en.json, single turn, as plain prompt/chosen/rejected strings short
enough that TRL's broken truncation never triggers), same
arguments: tokens, `evaluate()` metrics, gradients and a few training steps must agree in float32.
Only the tests import TRL; `merlina_orpo_plugin` never does (checked at the end).
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from trl.experimental import orpo as trl_orpo  # the test oracle (installed by make test)

from merlina_orpo_plugin import MerlinaORPOTrainer, ORPOConfig
from testkit import single_turn_pairs, tiny_llama

PARITY_METRICS = (
    "loss",
    "nll_loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "log_odds_ratio",
    "log_odds_chosen",
)


COMMON_ARGS = dict(
    beta=0.2,
    max_length=1024,
    per_device_train_batch_size=2,
    per_device_eval_batch_size=3,
    learning_rate=1e-3,
    lr_scheduler_type="constant",
    max_steps=3,
    logging_steps=1,
    seed=0,
    report_to="none",
    bf16=False,
    gradient_checkpointing=False,
    use_cpu=True,
    save_strategy="no",
    dataloader_num_workers=0,
)


@pytest.fixture(scope="module")
def trainers(tmp_path_factory, tokenizer):
    """(ours, TRL's), each on its own copy of one tiny model, same data, same arguments."""
    pairs = single_turn_pairs(14)
    train, evaluation = Dataset.from_list(pairs[:8]), Dataset.from_list(pairs[8:])
    model = tiny_llama(seed=0)
    ours = MerlinaORPOTrainer(
        model=copy.deepcopy(model),
        args=ORPOConfig(output_dir=str(tmp_path_factory.mktemp("ours")), **COMMON_ARGS),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
    )
    theirs = trl_orpo.ORPOTrainer(
        model=copy.deepcopy(model),
        args=trl_orpo.ORPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), **COMMON_ARGS),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
    )
    return ours, theirs


def test_tokens_match_trl(trainers):
    """Short rows, no truncation: both give the same prompt + completion ids, BOS and EOS included."""
    ours, theirs = trainers
    for mine, trl_row in zip(ours.eval_dataset, theirs.eval_dataset):
        assert mine["prompt_input_ids"] + mine["chosen_input_ids"] == trl_row["chosen_input_ids"]
        assert mine["prompt_input_ids"] + mine["rejected_input_ids"] == trl_row["rejected_input_ids"]


def test_evaluate_matches_trl(trainers):
    """Ours runs its default speed features (shared prompt, packing, chunked loss), TRL its padded rows.

    The sums run in another order, so float32 rounding differs by ~1e-7 of the operands: the margins
    (a difference of two rewards of ~2 that nearly cancel) get an absolute tolerance of 1e-6.
    """
    ours, theirs = trainers
    assert ours.speed.prefix_sharing and ours.speed.padding_free and ours.speed.loss_chunk_size > 0
    mine, reference = ours.evaluate(), theirs.evaluate()
    failures = []
    for name in PARITY_METRICS:
        key = f"eval_{name}"
        if mine[key] != pytest.approx(reference[key], rel=1e-5, abs=1e-6):
            failures.append(f"{key}: ours {mine[key]!r}, TRL {reference[key]!r}")
    assert not failures, failures
    assert "eval_or_loss" in mine
    assert mine["eval_loss"] == pytest.approx(mine["eval_nll_loss"] + mine["eval_or_loss"], rel=1e-6)


def _gradients(trainer, batch) -> dict[str, torch.Tensor]:
    model = trainer.model
    model.zero_grad()
    model.train()
    trainer.compute_loss(model, trainer._prepare_inputs(batch)).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def test_gradients_match_trl(trainers):
    ours, theirs = trainers
    mine = _gradients(ours, next(iter(ours.get_eval_dataloader())))
    reference = _gradients(theirs, next(iter(theirs.get_eval_dataloader())))
    assert mine.keys() == reference.keys() and len(mine) > 0
    for name in mine:
        torch.testing.assert_close(mine[name], reference[name], rtol=1e-4, atol=1e-7, msg=name)


def test_training_steps_match_trl(trainers):
    """Three AdamW steps from the same seed (same shuffling): the same loss at every step."""
    ours, theirs = trainers
    ours.train()
    theirs.train()
    mine = [log for log in ours.state.log_history if "loss" in log]
    reference = [log for log in theirs.state.log_history if "loss" in log]
    assert len(mine) == len(reference) == 3
    for step, (a, b) in enumerate(zip(mine, reference)):
        for name in ("loss", "nll_loss", "log_odds_ratio", "rewards/chosen", "rewards/rejected"):
            assert a[name] == pytest.approx(b[name], rel=1e-4), (step, name)
    assert mine[-1]["loss"] != pytest.approx(mine[0]["loss"], rel=1e-6), "the model did not train"


def test_trl_log1mexp_gradient_is_nan_ours_is_not():
    """TRL's log1mexp differentiates the unused log1p(-exp(x)) branch: NaN gradient near x = 0."""
    from trl.experimental.orpo.orpo_trainer import log1mexp as trl_log1mexp

    from merlina_orpo_plugin.compute.losses import log1mexp

    for fn, finite in ((trl_log1mexp, False), (log1mexp, True)):
        x = torch.tensor([-1e-8], requires_grad=True)
        fn(x).sum().backward()
        assert bool(torch.isfinite(x.grad).all()) is finite
    x = torch.tensor([-1e-8], requires_grad=True)
    log1mexp(x).sum().backward()
    assert x.grad.item() == pytest.approx(-1 / math.expm1(1e-8), rel=1e-3)


def test_package_never_imports_trl():
    code = (
        "import sys, merlina_orpo_plugin as m\n"
        "import merlina_orpo_plugin.trainer, merlina_orpo_plugin.factory, merlina_orpo_plugin.data\n"
        "m.MerlinaORPOTrainer, m.ORPOConfig, m.create_orpo_trainer\n"
        "bad = sorted(k for k in sys.modules if k == 'trl' or k.startswith('trl.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# TRL's documented ORPO script arguments (trl/scripts/orpo.py's docstring: "regular" run), as a
# one-line swap of the import would pass them; `bf16=False` because float32 is what 1e-4 can check.
TRL_DOCUMENTED_ARGS = dict(
    per_device_train_batch_size=4,
    max_steps=1000,
    learning_rate=8e-6,
    gradient_accumulation_steps=1,
    eval_steps=500,
    warmup_steps=150,
    logging_first_step=True,
    report_to="none",
    bf16=False,
    use_cpu=True,
)


@pytest.mark.parametrize("max_length", [256, 512, 1024])
def test_trl_documented_arguments_give_trls_eval_metrics(tmp_path, tokenizer, max_length):
    """The same arguments into both configs, nothing else: TRL 1.9's ORPOConfig has no `max_prompt_length`,
    so ours must derive its own from `max_length` (it used to default to 512 and refuse `max_length=512`)."""
    pairs = Dataset.from_list(single_turn_pairs(12))
    model = tiny_llama(seed=3)
    args = dict(TRL_DOCUMENTED_ARGS, max_length=max_length)
    ours = MerlinaORPOTrainer(model=copy.deepcopy(model), args=ORPOConfig(output_dir=str(tmp_path / "ours"), **args),
                              eval_dataset=pairs, processing_class=tokenizer)
    theirs = trl_orpo.ORPOTrainer(model=copy.deepcopy(model),
                                  args=trl_orpo.ORPOConfig(output_dir=str(tmp_path / "trl"), **args),
                                  train_dataset=pairs, eval_dataset=pairs, processing_class=tokenizer)
    mine, reference = ours.evaluate(), theirs.evaluate()
    for name in PARITY_METRICS:
        key = f"eval_{name}"
        assert mine[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("max_length", [64, 65, 100, 256, 512, 1024, 4096])
def test_orpo_config_takes_every_max_length_from_64_up(tmp_path, max_length):
    from merlina_orpo_plugin.options import prompt_floor

    config = ORPOConfig(output_dir=str(tmp_path), max_length=max_length, use_cpu=True)
    assert config.max_prompt_length is None  # TRL has no such field: unset, the floor follows max_length
    assert prompt_floor(config.max_length, config.max_prompt_length) == max_length // 2
