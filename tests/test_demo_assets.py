"""The demo's assets in examples/demo: the committed pairs and the preference-accuracy scorer.

Checked against: a fresh run of `build_pairs.py` (the committed files must be its output, byte
for byte); the real SmolLM2 tokenizer from ../shared (every pair passes `prepare_preference_dataset`
and stays short); a tiny in-process Llama, whose per-pair mean completion log-probs computed one
pair at a time with a plain log-softmax are the reference for the batched, padded scorer.
No real model is loaded here: the demo itself does that (`make demo`).
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest
import torch
from conftest import tiny_llama
from data_helpers import smollm2_tokenizer

from merlina_orpo_plugin.data import prepare_preference_dataset

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"


def _load(name: str):
    """A demo script as a module: examples/ is not a package."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DEMO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


build_pairs = _load("build_pairs")
preference_accuracy = _load("preference_accuracy")


def _read(name: str) -> list[dict]:
    return [json.loads(line) for line in (DEMO / name).read_text(encoding="utf-8").splitlines()]


def _question(row: dict) -> str:
    return next(m["content"] for m in row["prompt"] if m["role"] == "user")


# --- the pairs -------------------------------------------------------------------------------------


def test_committed_pairs_are_what_build_pairs_writes(tmp_path):
    build_pairs.main(["--out-dir", str(tmp_path)])
    for name in (build_pairs.TRAIN_FILE, build_pairs.EVAL_FILE):
        assert (tmp_path / name).read_bytes() == (DEMO / name).read_bytes(), (
            f"examples/demo/{name} differs from what build_pairs.py writes: run `python examples/demo/build_pairs.py`"
        )


def test_build_is_deterministic_and_depends_on_the_seed():
    assert build_pairs.build(0) == build_pairs.build(0)
    assert build_pairs.build(0) != build_pairs.build(1)


def test_pair_counts():
    train, held_out = _read(build_pairs.TRAIN_FILE), _read(build_pairs.EVAL_FILE)
    assert (len(train), len(held_out)) == (160, 40)
    assert sum(n for n, _ in build_pairs.COUNTS.values()) == 200
    assert sum(n for _, n in build_pairs.COUNTS.values()) == 40


def test_every_question_is_asked_once_and_none_held_out_is_trained_on():
    train, held_out = _read(build_pairs.TRAIN_FILE), _read(build_pairs.EVAL_FILE)
    train_questions = [_question(row) for row in train]
    held_out_questions = [_question(row) for row in held_out]
    assert len(set(train_questions)) == len(train_questions)
    assert len(set(held_out_questions)) == len(held_out_questions)
    assert not set(train_questions) & set(held_out_questions)


def test_rows_are_conversational_and_chosen_differs_from_rejected():
    rows = _read(build_pairs.TRAIN_FILE) + _read(build_pairs.EVAL_FILE)
    assert any(row["prompt"][0]["role"] == "system" for row in rows)
    assert any(row["prompt"][0]["role"] == "user" for row in rows)
    for i, row in enumerate(rows):
        assert set(row) == {"prompt", "chosen", "rejected"}, f"row {i}"
        assert [m["role"] for m in row["prompt"]][-1] == "user", f"row {i}"
        assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"], f"row {i}"
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"], f"row {i}"


def test_chosen_is_the_bare_answer_and_each_rejected_style_reads_as_named():
    question = build_pairs.capital(random.Random(0), ("Japan", "Tokyo", "Osaka"))
    row = build_pairs.to_row(random.Random(0), question, "sentence")
    assert row["chosen"] == [{"role": "assistant", "content": "Tokyo"}]
    assert row["rejected"] == [{"role": "assistant", "content": "The capital of Japan is Tokyo."}]
    reply = {style: build_pairs.rejected_reply(random.Random(0), question, style) for style in build_pairs.STYLES}
    assert reply["wrong_sentence"] == "The capital of Japan is Osaka."
    assert reply["wrong"] == "Osaka"
    assert "Osaka" in reply["filler_or_rude"] or "Tokyo" in reply["filler_or_rude"]
    assert len(reply["filler_or_rude"]) > len(reply["sentence"])
    with pytest.raises(ValueError, match=r"unknown rejected style 'terse'; valid: \('sentence'"):
        build_pairs.rejected_reply(random.Random(0), question, "terse")


def test_fact_sentences_capitalise_an_answer_only_at_the_start():
    sun = next(entry for entry in build_pairs.FACTS if entry[1] == "the Sun")
    honey = next(entry for entry in build_pairs.FACTS if entry[1] == "honey")
    assert build_pairs.fact(random.Random(0), sun).sentence == "The Sun is the closest star to Earth."
    assert build_pairs.fact(random.Random(0), honey).wrong_sentence == "Bees make milk."


def test_every_pair_tokenises_short_with_the_real_smollm2_tokenizer():
    tokenizer = smollm2_tokenizer()
    for name in (build_pairs.TRAIN_FILE, build_pairs.EVAL_FILE):
        dataset = datasets.Dataset.from_list(_read(name))
        tokenised, stats = prepare_preference_dataset(
            dataset, tokenizer, max_length=256, max_prompt_length=128, source=name
        )
        assert stats.pairs == len(dataset) and stats.truncated_pairs == 0
        assert stats.max_sequence_tokens < 128, "demo pairs must stay short: CPU training time grows with them"
        turn_end = [tokenizer.eos_token_id, *tokenizer.encode("\n", add_special_tokens=False)]  # "<|im_end|>\n"
        for row in tokenised:
            assert row["chosen_input_ids"][-2:] == row["rejected_input_ids"][-2:] == turn_end


# --- the scorer ------------------------------------------------------------------------------------


def _reference_logps(model, pair: dict) -> float:
    """Mean log-prob of one tokenised pair's completion, one unpadded sequence, plain log-softmax."""
    ids = torch.tensor([pair["prompt_input_ids"] + pair["completion"]])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    start = len(pair["prompt_input_ids"])
    targets = ids[0, start:]
    return logps[start - 1 :].gather(-1, targets[:, None]).mean().item()


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
                sides[side] = ids[len(prompt) :]
            pairs.append({"prompt_input_ids": prompt, **sides})
    return pairs


@dataclass(frozen=True)
class IdsOnlyTokenizer:
    """All the pipeline reads from a tokenizer for already tokenised pairs: no text is encoded."""

    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 2


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=0).eval()


def test_scores_match_a_per_pair_reference_and_prefer_the_likely_answers(model):
    # Prompts of different lengths, and in pair 1 a 4-token chosen against a 2-token rejected: every
    # batch is padded, so the batched scores must still equal the unpadded one-pair reference.
    prompts = [[1, 500, 501], [1, 600, 601, 602, 603, 604], [1, 700], [1, 800, 801, 802]]
    pairs = _greedy_pairs(model, prompts, length=4)
    pairs[1]["rejected_input_ids"] = pairs[1]["rejected_input_ids"][:2]  # chosen 4 tokens, rejected 2

    scores = preference_accuracy.score_pairs(
        model, IdsOnlyTokenizer(), pairs, batch_size=3, max_length=None, max_prompt_length=None
    )

    for i, pair in enumerate(pairs):
        chosen = _reference_logps(model, {**pair, "completion": pair["chosen_input_ids"]})
        rejected = _reference_logps(model, {**pair, "completion": pair["rejected_input_ids"]})
        assert scores.chosen_logps[i] == pytest.approx(chosen, abs=1e-4), f"pair {i} chosen"
        assert scores.rejected_logps[i] == pytest.approx(rejected, abs=1e-4), f"pair {i} rejected"
    assert (scores.correct, scores.accuracy) == (4, 1.0)
    assert scores.mean_margin > 0


def test_swapped_pairs_count_as_wrong_and_ties_do_not_count(model):
    pairs = _greedy_pairs(model, [[1, 500, 501], [1, 600], [1, 700, 701]], length=3)
    swapped = {**pairs[1], "chosen_input_ids": pairs[1]["rejected_input_ids"]}
    swapped["rejected_input_ids"] = pairs[1]["chosen_input_ids"]
    tie = {**pairs[2], "rejected_input_ids": pairs[2]["chosen_input_ids"]}

    scores = preference_accuracy.score_pairs(
        model, IdsOnlyTokenizer(), [pairs[0], swapped, tie], max_length=None, max_prompt_length=None
    )

    assert scores.correct == 1 and scores.accuracy == pytest.approx(1 / 3)
    assert scores.chosen_logps[2] == scores.rejected_logps[2]
    summary = scores.summary()
    assert summary["pairs"] == 3 and summary["mean_margin"] == pytest.approx(scores.mean_margin)


def test_batch_size_does_not_change_the_scores_of_real_demo_pairs(model):
    tokenizer = smollm2_tokenizer()
    rows = _read(build_pairs.EVAL_FILE)[:5]
    one_by_one = preference_accuracy.score_pairs(model, tokenizer, rows, batch_size=1)
    batched = preference_accuracy.score_pairs(model, tokenizer, rows, batch_size=4)
    assert batched.chosen_logps == pytest.approx(one_by_one.chosen_logps, abs=1e-4)
    assert batched.rejected_logps == pytest.approx(one_by_one.rejected_logps, abs=1e-4)


def test_bad_batch_size_and_bad_data_name_the_problem(model, tmp_path):
    with pytest.raises(ValueError, match=r"`batch_size` must be >= 1, got 0"):
        preference_accuracy.score_pairs(model, IdsOnlyTokenizer(), [], batch_size=0)
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{not json\n')
    with pytest.raises(ValueError, match=r"line 2 of .*pairs\.jsonl: not JSON"):
        preference_accuracy.read_jsonl(path)


def test_cli_scores_base_and_adapter_in_one_run(model, tmp_path):
    from peft import LoraConfig, get_peft_model

    tokenizer = smollm2_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    # Random (not zero) LoRA weights, so that the adapter changes the scores.
    lora_config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = get_peft_model(tiny_llama(seed=0), lora_config)
    lora.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _read(build_pairs.EVAL_FILE)[:3]))

    preference_accuracy.main(
        ["--model", str(tmp_path / "model"), "--adapter", str(tmp_path / "adapter"), "--compare-base",
         "--data", str(data), "--json", str(tmp_path / "out.json")]
    )

    result = json.loads((tmp_path / "out.json").read_text())
    base, adapted = result["runs"]
    assert base["label"] == "base model" and adapted["label"].startswith("with adapter")
    expected = preference_accuracy.score_pairs(model, tokenizer, _read(build_pairs.EVAL_FILE)[:3])
    assert base["scores"]["chosen_logps"] == pytest.approx(expected.chosen_logps, abs=1e-4)
    assert adapted["scores"]["chosen_logps"] != pytest.approx(expected.chosen_logps, abs=1e-4)
    assert base["pairs"] == adapted["pairs"] == 3
