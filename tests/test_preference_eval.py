"""Preference accuracy (`preference_eval.py`) and `axolotl orpo-eval`, the command that reports it.

The scorer is checked against a plain reference: per-pair mean completion log-probs computed one
unpadded pair at a time with a float64 log-softmax on a tiny in-process Llama. The command runs
in-process through click on a recipe with a tiny model and a random (non-zero) LoRA adapter, and must
score the base model and the adapter in one run, with the pairs tokenised as training tokenises them:
its base scores equal the scorer's on the rows `load_orpo_datasets` (what `axolotl train` trains on)
prepares from the same recipe and file.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from testkit import QUANTIZABLE_SIZES, tiny_llama
from merlina_orpo_plugin.preference_eval import score_tokenised

PAD = 2


def _reference_logps(model, prompt: list[int], completion: list[int]) -> float:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    return logps[len(prompt) - 1 :].gather(-1, ids[0, len(prompt):, None]).mean().item()


def _greedy_pairs(model, prompts: list[list[int]], length: int) -> list[dict]:
    """Pairs the model must prefer: chosen = its most likely next tokens, rejected = its least likely.

    At every step the argmax token has log-prob >= -log V >= the argmin token's, so the chosen mean
    beats the rejected mean whatever the random weights are.
    """
    pairs = []
    with torch.no_grad():
        for prompt in prompts:
            sides = {}
            for side, pick in (("chosen_input_ids", torch.argmax), ("rejected_input_ids", torch.argmin)):
                ids = list(prompt)
                for _ in range(length):
                    ids.append(int(pick(model(input_ids=torch.tensor([ids])).logits[0, -1])))
                sides[side] = ids[len(prompt):]
            pairs.append({"prompt_input_ids": prompt, **sides})
    return pairs


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=0).eval()


def test_scores_match_a_per_pair_reference_and_prefer_the_likely_answers(model):
    # Prompts of different lengths, and in pair 1 a 4-token chosen against a 2-token rejected: every
    # batch is padded, so the batched scores must still equal the unpadded one-pair reference.
    prompts = [[1, 500, 501], [1, 600, 601, 602, 603, 604], [1, 700], [1, 800, 801, 802]]
    pairs = _greedy_pairs(model, prompts, length=4)
    pairs[1]["rejected_input_ids"] = pairs[1]["rejected_input_ids"][:2]
    scores = score_tokenised(model, pairs, PAD, batch_size=3)
    for i, pair in enumerate(pairs):
        for side, got in (("chosen", scores.chosen_logps[i]), ("rejected", scores.rejected_logps[i])):
            expected = _reference_logps(model, pair["prompt_input_ids"], pair[f"{side}_input_ids"])
            assert got == pytest.approx(expected, abs=1e-4), f"pair {i} {side}"
    summary = scores.summary()
    assert (summary["correct"], summary["accuracy"]) == (4, 1.0) and summary["mean_margin"] > 0


def test_swapped_pairs_count_as_wrong_ties_do_not_count_and_batches_do_not_matter(model):
    pairs = _greedy_pairs(model, [[1, 500, 501], [1, 600], [1, 700, 701]], length=3)
    swapped = {**pairs[1], "chosen_input_ids": pairs[1]["rejected_input_ids"],
               "rejected_input_ids": pairs[1]["chosen_input_ids"]}
    tie = {**pairs[2], "rejected_input_ids": pairs[2]["chosen_input_ids"]}
    scores = score_tokenised(model, [pairs[0], swapped, tie], PAD, batch_size=2)
    assert scores.correct == 1 and scores.summary()["accuracy"] == pytest.approx(1 / 3)
    assert scores.chosen_logps[2] == scores.rejected_logps[2]
    one_by_one = score_tokenised(model, [pairs[0], swapped, tie], PAD, batch_size=1)
    assert one_by_one.chosen_logps == pytest.approx(scores.chosen_logps, abs=1e-5)
    assert one_by_one.rejected_logps == pytest.approx(scores.rejected_logps, abs=1e-5)
    with pytest.raises(ValueError, match=r"`batch_size` must be >= 1, got 0"):
        score_tokenised(model, pairs, PAD, batch_size=0)


@pytest.mark.needs("axolotl")
def test_orpo_eval_scores_the_base_model_and_the_adapter_in_one_run(tmp_path, model, tiny_llama_dir):
    from e2e_helpers import write_config
    from peft import LoraConfig, get_peft_model

    from merlina_orpo_plugin.integration.eval_cli import orpo_eval

    lora = get_peft_model(tiny_llama(seed=0, **QUANTIZABLE_SIZES, tie_word_embeddings=True),  # tiny_llama_dir's shape
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({
        "prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
        "chosen": [{"role": "assistant", "content": str(2 * i)}],
        "rejected": [{"role": "assistant", "content": f"Probably {i + 3}, I think."}]}) + "\n" for i in range(5)))
    config = write_config(tmp_path, tiny_llama_dir, [{"path": str(pairs), "ds_type": "json", "type": "chat_template"}])
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(orpo_eval, [str(config), "--data", str(pairs), "--adapter", str(tmp_path / "adapter"),
                                            "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "preference accuracy" in result.output and "base" in result.output and "trained" in result.output
    (scored,) = json.loads(out.read_text())["results"]
    base, trained = scored["runs"]["base"], scored["runs"]["trained"]
    assert base["pairs"] == trained["pairs"] == 5
    assert base["mean_chosen_logp"] != pytest.approx(trained["mean_chosen_logp"], abs=1e-5)  # the adapter acts
    assert 0 <= base["accuracy"] <= 1 and base["correct"] == round(base["accuracy"] * 5)

    # The same pairs as training tokenises them (the recipe's train split, from the pipeline
    # `axolotl train` calls), scored in-process by the base model: the command's base numbers.
    from axolotl.loaders import load_tokenizer
    from transformers import AutoModelForCausalLM

    from merlina_orpo_plugin.integration.cli import _load_orpo_config
    from merlina_orpo_plugin.integration.datasets import load_orpo_datasets

    cfg = _load_orpo_config(str(config))
    tokenizer = load_tokenizer(cfg)
    train, evaluation, _ = load_orpo_datasets(cfg, tokenizer)
    assert evaluation is None and len(train) == 5
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    reference = score_tokenised(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
                                train.to_list(), pad).summary()
    assert base["correct"] == reference["correct"]
    for key in ("mean_chosen_logp", "mean_rejected_logp"):
        assert base[key] == pytest.approx(reference[key], abs=1e-5), key
