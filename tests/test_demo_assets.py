"""The demo's committed pairs in examples/demo.

Checked against: a fresh run of `build_pairs.py` (the committed files must be its output, byte
for byte); the real SmolLM2 tokenizer (every pair passes `prepare_preference_dataset` and stays
short). The demo scores them with `axolotl orpo-eval` (tests/test_preference_eval.py); no real
model is loaded here: the demo itself does that (`make demo`).
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import datasets
import pytest
from testkit import smollm2_tokenizer

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
