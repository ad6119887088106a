"""Every speed feature is the same training: shared prompt, packed rows and the chunked loss each
give the loss, the metrics and the gradients of TRL's padded layout (which `test_trl_parity.py`
ties to TRL itself), to 1e-5 relative in float32.

The pairs are the project's ShareGPT rows (tests/assets/pairs/sharegpt_en.json): single- and
multi-turn conversations of mixed lengths, tokenised by the real SmolLM2 tokenizer and cut to
`max_length` 160 so that some are truncated. The models have a vocabulary of 2,048, not SmolLM2's
49,152: the equivalence does not depend on which ids the tokens have, and the [tokens, V] logits
are most of a step's cost. Each id above the special ones is folded into that range.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import peft
import pytest
import torch
from datasets import Dataset

from testkit import SHAREGPT_ROLES, pairs_rows, tiny_llama
from merlina_orpo_plugin.batch.collator import ORPODataCollator
from merlina_orpo_plugin.data import prepare_preference_dataset
from merlina_orpo_plugin.compute.forward import ORPOForwardOutput
from merlina_orpo_plugin.compute.objective import LossSpec, orpo_objective
from merlina_orpo_plugin.model.adapter import find_model_facts
from merlina_orpo_plugin.batch.packing import PADDED, BatchLayout

VOCAB = 2048
SPECIAL = 3  # SmolLM2's <|endoftext|>, <|im_start|>, <|im_end|>: ids 0-2 keep their meaning
OUTPUTS = ("chosen_logps", "rejected_logps", "nll_loss", "nll_sum", "nll_tokens", "chosen_logits_mean", "rejected_logits_mean")


def _conversation_pairs(n: int) -> list[dict]:
    rows = pairs_rows("sharegpt_en.json")
    single = [r for r in rows if len(r["conversations"]) == 1][: n // 2]
    multi = [r for r in rows if len(r["conversations"]) >= 3][: n - len(single)]
    return [
        {
            "prompt": [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"][:300]} for t in row["conversations"]],
            "chosen": [{"role": "assistant", "content": row["chosen"]["value"][:400]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]["value"][:250]}],
        }
        for row in single + multi
    ]


@pytest.fixture(scope="module")
def features(tokenizer):
    dataset, stats = prepare_preference_dataset(
        Dataset.from_list(_conversation_pairs(6)), tokenizer, max_length=160, max_prompt_length=96
    )
    assert stats.truncated_pairs > 0, "the check must cover truncated pairs"
    rows = [{name: [_fold(i) for i in ids] for name, ids in row.items()} for row in dataset]
    lengths = {len(r["prompt_input_ids"]) + len(r["chosen_input_ids"]) for r in rows}
    assert len(lengths) > 2, "the check must cover mixed lengths"
    return rows


def _fold(token_id: int) -> int:
    return token_id if token_id < SPECIAL else SPECIAL + (token_id - SPECIAL) % (VOCAB - SPECIAL)


def _model(seed: int = 0, **overrides):
    return tiny_llama(seed=seed, vocab_size=VOCAB, **overrides)


def _run(model, features, *, layout=PADDED, loss_chunk_size=0, nll_include_prompt=True, fused=False):
    batch = ORPODataCollator(pad_token_id=2, layout=layout, pack_length=300)(features)
    model.zero_grad()
    # the trainer's loss outside an accumulation window: scales are the batch's token and pair means
    spec = LossSpec(0.1, nll_include_prompt, loss_chunk_size, fused=fused)
    step = orpo_objective(model, batch, spec, facts=find_model_facts(model, chunked=loss_chunk_size > 0))
    step.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    scores = step.scores
    out = SimpleNamespace(**ORPOForwardOutput.of(scores)._asdict(), nll_sum=scores.nll_sum, nll_tokens=scores.nll_tokens,
                          processed_tokens=scores.processed_tokens, unique_tokens=scores.unique_tokens, fused=step.fused)
    return step.loss.detach(), out, grads, batch


def _assert_same(got, reference):
    (loss, out, grads, _), (ref_loss, ref_out, ref_grads, _) = got, reference
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    for name in OUTPUTS:
        torch.testing.assert_close(getattr(out, name), getattr(ref_out, name), rtol=1e-5, atol=1e-6, msg=name)
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in grads.items():
        scale = ref_grads[name].abs().max()
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-5 * scale, msg=name)


SETTINGS = [
    dict(layout=BatchLayout(s, p), loss_chunk_size=c)
    for s, p, c in itertools.product((False, True), (False, True), (0, 37))
    if (s, p, c) != (False, False, 0)
]


@pytest.fixture(scope="module")
def padded_reference(features):
    """The padded, unchunked result per attention implementation, computed once."""
    cache = {}

    def get(attn):
        if attn not in cache:
            cache[attn] = _run(_model(seed=1, attn_implementation=attn), features)
        return cache[attn]

    return get


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"{s['layout'].name}-chunk={s['loss_chunk_size']}")
def test_speed_features_match_the_padded_path(features, padded_reference, attn, setting):
    model = _model(seed=1, attn_implementation=attn)
    _assert_same(_run(model, features, **setting), padded_reference(attn))


@pytest.mark.parametrize("nll_include_prompt", [True, False])
def test_all_features_with_tied_embeddings_and_completion_only_nll(features, nll_include_prompt):
    model = _model(seed=2, tie_word_embeddings=True)
    everything = dict(layout=BatchLayout(True, True), loss_chunk_size=64)
    _assert_same(
        _run(model, features, nll_include_prompt=nll_include_prompt, **everything),
        _run(model, features, nll_include_prompt=nll_include_prompt),
    )


def test_lora_on_the_head_gets_the_same_gradients(features):
    model = peft.get_peft_model(
        _model(seed=3),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False),
    )
    everything = dict(layout=BatchLayout(True, True), loss_chunk_size=50)
    got, reference = _run(model, features, **everything), _run(model, features)
    assert any("lm_head.lora" in name for name in got[2])
    _assert_same(got, reference)


def test_lora_with_a_frozen_head_gets_the_same_gradients(features):
    """LoRA off the head (the usual recipe): the chunked loss takes its no-recompute path."""
    model = peft.get_peft_model(
        _model(seed=5, tie_word_embeddings=True),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    )
    assert not model.get_output_embeddings().weight.requires_grad
    everything = dict(layout=BatchLayout(True, True), loss_chunk_size=50)
    got, reference = _run(model, features, **everything), _run(model, features)
    assert got[2] and all("lora" in name for name in got[2])
    _assert_same(got, reference)


def test_shared_packed_layout_computes_each_token_once(features):
    """Processed/unique tokens: TRL's layout pays every prompt twice and its padding; ours ~1."""
    _, plain, _, _ = _run(_model(), features)
    _, packed, _, _ = _run(_model(), features, layout=BatchLayout(True, True))
    assert plain.processed_tokens / plain.unique_tokens > 1.5
    assert packed.processed_tokens / packed.unique_tokens < 1.1


def test_chunked_loss_reproduces_gemma2_logit_softcapping(features):
    """Gemma 2 soft-caps its logits after the head: the chunked path must do the same."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(4)
    config = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.5,
                          attn_implementation="eager", pad_token_id=2)
    model = Gemma2ForCausalLM(config)
    got, reference = _run(model, features, loss_chunk_size=64), _run(model, features)
    assert reference[1].chosen_logits_mean.abs().max() < 0.5  # the cap is active
    _assert_same(got, reference)
    model.get_output_embeddings().requires_grad_(False)  # frozen (tied) head: the no-recompute path
    got, reference = _run(model, features, loss_chunk_size=64), _run(model, features)
    assert "model.embed_tokens.weight" not in got[2]
    _assert_same(got, reference)


@pytest.mark.parametrize("chunk", [100, 230], ids=["pair per chunk", "pairs per chunk"])
@pytest.mark.parametrize("nll_include_prompt", [True, False])
@pytest.mark.parametrize("layout", [PADDED, BatchLayout(True, True)], ids=lambda layout: layout.name)
def test_a_trained_head_fused_loss_equals_the_loss_it_replaces(features, padded_reference, layout, nll_include_prompt,
                                                               chunk):
    """Full fine-tuning: the loss summed over chunks of whole pairs, its gradients taken in the forward
    (no recompute), against the padded, unchunked loss."""
    model = _model(seed=1)
    got = _run(model, features, layout=layout, loss_chunk_size=chunk, nll_include_prompt=nll_include_prompt, fused=True)
    assert got[1].fused, "the fused path must have run"
    reference = _run(_model(seed=1), features, nll_include_prompt=nll_include_prompt)
    _assert_same(got, reference)


def test_the_fused_loss_with_tied_embeddings_and_lora_on_the_head(features):
    tied = _model(seed=2, tie_word_embeddings=True)
    got = _run(tied, features, layout=BatchLayout(True, True), loss_chunk_size=100, fused=True)
    assert got[1].fused and "model.embed_tokens.weight" in got[2]
    _assert_same(got, _run(_model(seed=2, tie_word_embeddings=True), features))
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
    model = peft.get_peft_model(_model(seed=3), lora)
    got = _run(model, features, layout=BatchLayout(True, True), loss_chunk_size=100, fused=True)
    assert got[1].fused and any("lm_head.lora" in name for name in got[2])
    _assert_same(got, _run(model, features))


def test_a_pair_longer_than_four_chunks_takes_the_checkpointed_path(features):
    got = _run(_model(seed=1), features, layout=BatchLayout(True, True), loss_chunk_size=16, fused=True)
    assert not got[1].fused  # fell back: the chunk of one pair would be more than 4 x 16 tokens
