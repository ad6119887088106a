"""The model's facts are found once per run and model (`model.adapter.ModelFacts`), not on every step.

What the ORPO forward needs to know about the model (its base module, LM head, decoder, logit
post-processing, whether the head is trained or sharded and how, the attention implementation)
used to be worked out again on every step, with walks of every module of the model
(`named_modules` / `modules`, which `parameters()` also runs). Here `torch.nn.Module.named_modules`
and `.modules` are replaced by counting wrappers for a 4-step training run, full fine-tune and LoRA,
chunked loss on and off: after the first (setup) step, no call comes from this package (the caller
is the first frame outside torch's own `Module` methods, so a `parameters()` walk counts too), and
the facts are found once. Calls that transformers, accelerate or PEFT make are not ours and not
counted. Then: the facts are found anew when the model changes (`train()` twice with
``model_init``; another model object; a model re-wrapped in place, which changes its class).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

import merlina_orpo_plugin
from merlina_orpo_plugin import MerlinaORPOTrainer
from merlina_orpo_plugin.model import adapter
from testkit import orpo_args, single_turn_pairs, tiny_llama

PACKAGE = str(Path(merlina_orpo_plugin.__file__).parent)
TORCH_MODULE = torch.nn.modules.module.__file__


def _caller() -> str:
    """The file of the first frame outside torch's `Module` methods and this file's wrapper."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in (TORCH_MODULE, __file__):
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else "?"


class _WalkCounter(TrainerCallback):
    """Records ``(after setup, method, caller file)`` for every module walk; setup is the first step."""

    def __init__(self):
        self.after_setup = False
        self.calls: list[tuple[bool, str, str]] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.after_setup = state.global_step >= 1

    def patch(self, monkeypatch):
        for name in ("named_modules", "modules"):
            original = getattr(torch.nn.Module, name)

            def counting(module, *args, _original=original, _name=name, **kwargs):
                self.calls.append((self.after_setup, _name, _caller()))
                return _original(module, *args, **kwargs)

            monkeypatch.setattr(torch.nn.Module, name, counting)

    def ours(self, after_setup: bool) -> list[tuple[str, str]]:
        return [(name, caller) for late, name, caller in self.calls if late == after_setup and caller.startswith(PACKAGE)]


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")


def _spy_on_facts(monkeypatch) -> list:
    """Each model `find_model_facts` is called on, in order."""
    found, original = [], adapter.find_model_facts

    def spy(model, chunked):
        found.append(model)
        return original(model, chunked)

    monkeypatch.setattr(adapter, "find_model_facts", spy)
    return found


@pytest.mark.parametrize("tune", ["full", "lora"])
@pytest.mark.parametrize("chunk", [0, 8], ids=["full logits", "chunked loss"])
def test_steps_after_the_first_walk_no_modules(tmp_path, tokenizer, monkeypatch, tune, chunk):
    pairs = Dataset.from_list(single_turn_pairs(8))
    counter = _WalkCounter()
    trainer = MerlinaORPOTrainer(model=tiny_llama(), args=orpo_args(tmp_path, max_steps=4, loss_chunk_size=chunk),
                                 train_dataset=pairs, processing_class=tokenizer, callbacks=[counter],
                                 peft_config=_lora() if tune == "lora" else None)
    assert trainer.speed.loss_chunk_size == chunk
    found = _spy_on_facts(monkeypatch)
    counter.patch(monkeypatch)
    trainer.train()
    monkeypatch.undo()
    assert trainer.state.global_step == 4
    assert counter.ours(after_setup=False), "the counter saw no walk of ours while the facts were found"
    assert counter.ours(after_setup=True) == []
    assert len(found) == 1 and found[0] is trainer.model_wrapped
    facts = trainer.speed.model_facts(trainer.model_wrapped)
    base = trainer.model.get_base_model() if tune == "lora" else trainer.model
    assert facts.base is base and facts.attention == base.config._attn_implementation
    if chunk:
        assert facts.head is base.lm_head and facts.decoder is base.model
        assert facts.head_trained == (tune == "full") and not facts.sharding.sharded
        assert facts.sharding.call is base.lm_head and facts.sharding.units == ()
    else:
        assert facts.head is None and facts.sharding is None


def test_facts_are_found_again_for_each_run_with_model_init(tmp_path, tokenizer, monkeypatch):
    pairs = Dataset.from_list(single_turn_pairs(4))
    trainer = MerlinaORPOTrainer(model_init=lambda: tiny_llama(), args=orpo_args(tmp_path, loss_chunk_size=8),
                                 train_dataset=pairs, processing_class=tokenizer)
    found = _spy_on_facts(monkeypatch)
    trainer.train()
    first = trainer.model
    trainer.train()
    assert trainer.model is not first
    assert [model is first for model in found] == [True, False] and found[1] is trainer.model_wrapped
    facts = trainer.speed.model_facts(trainer.model)
    assert facts.head is trainer.model.lm_head and facts.head is not first.lm_head


def test_the_cache_finds_facts_anew_for_another_or_rewrapped_model():
    cache = adapter.ModelFactsCache()
    model, other = tiny_llama(), tiny_llama(seed=1)
    facts = cache.of(model, chunked=True)
    assert cache.of(model, chunked=True) is facts
    assert cache.of(other, chunked=True).head is other.lm_head
    assert cache.of(model, chunked=True) is facts  # training's and evaluation's models are both kept
    assert cache.of(model, chunked=False) is not facts and cache.of(model, chunked=False).head is None

    class Rewrapped(type(model)):  # what FSDP2's fully_shard does: the same object, a new class
        pass

    model.__class__ = Rewrapped
    assert cache.of(model, chunked=True) is not facts


@pytest.mark.parametrize("tune", ["full", "lora"])
def test_the_loss_is_fused_in_training_where_the_facts_say_the_head_is_trained_and_whole(tmp_path, tokenizer,
                                                                                         monkeypatch, tune):
    """The mode is the facts' (`ModelFacts.fuses`), not decided a second time: a fully trained head fuses
    its chunked loss in training; LoRA's frozen head and every evaluation step take the chunked path. Chunks
    of 64 tokens: each pair fits one fused chunk (a longer pair takes the chunked path, `compute.head`)."""
    from merlina_orpo_plugin import trainer as trainer_module

    modes, original = [], trainer_module.orpo_objective

    def spy(*args, **kwargs):
        step = original(*args, **kwargs)
        modes.append((torch.is_grad_enabled(), step.fused))
        return step

    monkeypatch.setattr(trainer_module, "orpo_objective", spy)
    pairs = Dataset.from_list(single_turn_pairs(4))
    trainer = MerlinaORPOTrainer(model=tiny_llama(), args=orpo_args(tmp_path, loss_chunk_size=64),
                                 train_dataset=pairs, eval_dataset=pairs, processing_class=tokenizer,
                                 peft_config=_lora() if tune == "lora" else None)
    trainer.train()
    trainer.evaluate()
    assert trainer.speed.model_facts(trainer.model_wrapped).fuses == (tune == "full")
    assert {fused for grad, fused in modes if grad} == {tune == "full"}
    assert {fused for grad, fused in modes if not grad} == {False}
