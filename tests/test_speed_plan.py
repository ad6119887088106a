"""`plan_speed`: which speed features a model gets, and the stated reason for each one turned off."""

from __future__ import annotations

import logging

import pytest

from testkit import tiny_llama
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


ON_CUDA = dict(ALL_ON, flex_attention=True, device_type="cuda")


@pytest.mark.parametrize("loaded_with", ["sdpa", "flash_attention_2"])
def test_on_cuda_sdpa_and_flash_attention_models_run_the_layouts_on_flex_attention(caplog, loaded_with):
    """Axolotl's `flash_attention: true` / `sdpa_attention: true` and no attention key at all end here.

    Only the switch is checked on CPU: FlexAttention's kernels compile for the GPU (the block mask
    itself is tested in test_attention.py, the kernels by benchmarks/gpu_check on a GPU)."""
    model = tiny_llama()
    model.config._attn_implementation = loaded_with  # the name Axolotl's YAML leads to; no kernel runs here
    with caplog.at_level(logging.INFO, logger="merlina_orpo_plugin.speed"):
        plan = plan_speed(model, **ON_CUDA)
    assert plan.attention == "flex_attention" == model.config._attn_implementation
    assert (plan.prefix_sharing, plan.padding_free, plan.loss_chunk_size, plan.fallbacks) == (True, True, 512, ())
    assert f"flex_attention instead of '{loaded_with}'" in caplog.text


def test_flex_attention_is_not_forced_where_it_should_not_be():
    eager = tiny_llama(attn_implementation="eager")
    plan = plan_speed(eager, **ON_CUDA)
    assert plan.attention == "eager" and plan.prefix_sharing and "kept as chosen" in plan.fallbacks[0]
    assert plan_speed(tiny_llama(), **{**ON_CUDA, "device_type": "cpu"}).attention == "sdpa"
    assert plan_speed(tiny_llama(), **{**ON_CUDA, "flex_attention": False}).attention == "sdpa"
    padded = plan_speed(tiny_llama(), **{**ON_CUDA, "prefix_sharing": False, "padding_free": False})
    assert padded.attention == "sdpa"  # the padded layout needs no custom mask: the model's kernel stays
