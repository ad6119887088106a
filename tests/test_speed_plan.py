"""`plan_speed`: which speed features a model gets, and the stated reason for each one turned off."""

from __future__ import annotations

import logging

import pytest

from conftest import tiny_llama
from merlina_orpo_plugin.speed import plan_speed

ALL_ON = dict(prefix_sharing=True, padding_free=True, loss_chunk_size=512, max_length=1024)


def test_sdpa_llama_gets_everything():
    plan = plan_speed(tiny_llama(), **ALL_ON)
    assert (plan.prefix_sharing, plan.padding_free, plan.loss_chunk_size, plan.fallbacks) == (True, True, 512, ())


def test_flash_attention_keeps_the_chunked_loss_only(caplog):
    model = tiny_llama()
    model.config._attn_implementation = "flash_attention_2"  # the kernels are not installed on CPU; only the name matters
    with caplog.at_level(logging.WARNING, logger="merlina_orpo_plugin.speed"):
        plan = plan_speed(model, **ALL_ON)
    assert (plan.prefix_sharing, plan.padding_free, plan.loss_chunk_size) == (False, False, 512)
    assert "'flash_attention_2' takes no custom attention mask" in caplog.text


def test_short_sliding_window_turns_the_custom_mask_off():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=256, attn_implementation="sdpa")
    plan = plan_speed(MistralForCausalLM(config), **ALL_ON)
    assert not plan.prefix_sharing and "sliding-window attention (window 256)" in plan.fallbacks[0]
    assert plan_speed(MistralForCausalLM(config), **{**ALL_ON, "max_length": 256}).prefix_sharing


def test_moe_router_loss_turns_the_custom_mask_off():
    model = tiny_llama()
    model.config.output_router_logits = True
    plan = plan_speed(model, **ALL_ON)
    assert not plan.padding_free and "router loss" in plan.fallbacks[0]


@pytest.mark.parametrize("key", ["final_logit_softcapping", "logit_scale", "logits_scaling"])
def test_known_logit_postprocessing_keeps_chunking(key):
    model = tiny_llama()
    setattr(model.config, key, 2.0)
    assert plan_speed(model, **ALL_ON).loss_chunk_size == 512


def test_unknown_logit_postprocessing_turns_chunking_off():
    model = tiny_llama()
    model.config.lm_head_multiplier = 0.5
    plan = plan_speed(model, **ALL_ON)
    assert plan.loss_chunk_size == 0 and "lm_head_multiplier" in plan.fallbacks[0]
