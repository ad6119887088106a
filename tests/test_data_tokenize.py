"""Tokenisation of preference pairs: token-prefix split, BOS/EOS, truncation, and the whole pipeline.

Checked against: hand-counted ids for the pure functions; the text the real SmolLM2 ChatML template
renders for the project's 300 ShareGPT pairs and its H4 UltraFeedback rows (tests/assets/pairs; ids
must decode back to it);
TRL's `ORPOTrainer.tokenize_row`, called on a bare instance: its truncation (before TRL 1.15 it overshoots
/ over-cuts, which we fix; from 1.15 it cuts long answers as we do, and the test branches on
`trl.__version__`) and ChatML answers, which get a double end token from TRL.
"""

from __future__ import annotations

import logging
import warnings

import pytest
from testkit import SMOLLM2_DEFAULT_SYSTEM, conversational_rows, dataset, smollm2_tokenizer
from testkit import standard_rows, ultrafeedback_rows

from merlina_orpo_plugin.data import OUTPUT_COLUMNS, prepare_preference_dataset
from merlina_orpo_plugin.data.tokenize import common_prefix_length, ensure_eos, split_prompt_ids, truncate_pair

BOS, EOS, NEWLINE = 1, 2, 198  # SmolLM2: <|im_start|>, <|im_end|>, "\n"
LIMITS = dict(max_length=1024, max_prompt_length=512, max_completion_length=None)


def ids(n: int, start: int = 100) -> list[int]:
    return list(range(start, start + n))


def words(n: int) -> str:
    """Text of exactly n SmolLM2 tokens: 'word' then n-1 times ' word'."""
    return "word" + " word" * (n - 1)


def trl_tokenize_row(tokenizer, row: dict, max_length: int) -> dict:
    with warnings.catch_warnings():  # "importing from trl.experimental" is the point here
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOTrainer

    trainer = object.__new__(ORPOTrainer)  # skip __init__: tokenize_row reads only these attributes
    trainer.processing_class, trainer.is_encoder_decoder, trainer.max_length = tokenizer, False, max_length
    return trainer.tokenize_row(row)


def test_truncate_pair_chosen_900_cuts_only_the_overflow():
    # 200 + 900 = 1100 > 1024: the prompt (200 <= 512) stays, both answers get 1024 - 200 = 824.
    prompt, chosen, rejected, prompt_cut, completion_cut = truncate_pair(ids(200), ids(900), ids(300), **LIMITS)
    assert (len(prompt), len(chosen), len(rejected)) == (200, 824, 300)
    assert chosen == ids(824) and (prompt_cut, completion_cut) == (False, True)


def test_truncate_pair_chosen_1100_ends_at_max_length():
    prompt, chosen, rejected, *_ = truncate_pair(ids(200), ids(1100), ids(300), **LIMITS)
    assert len(prompt) + len(chosen) == 1024 and len(prompt) + len(rejected) == 500


def test_long_answers_truncated_against_trl_tokenize_row():
    """A 200-token prompt, a 900- or 1100-token chosen answer, a 51-token rejected one, max_length 1024.

    Ours: each answer is cut to the 824 tokens the prompt leaves; the rejected one stays whole.
    TRL decides by version (the suite runs TRL 1.9, 1.14.1 and 1.16): before 1.15 it cut BOTH answers
    to max_length - the longer answer and never the prompt: chosen[:124] (a 324-token sequence) and
    chosen[:-76] (1224 tokens, over the limit), and rejected[:-76] empties the rejected answer.
    TRL 1.15+ (PR #6588) cuts each answer to the room its own prompt leaves: exactly our ids."""
    import trl
    from packaging.version import Version

    tok = smollm2_tokenizer()
    assert len(tok(words(199), add_special_tokens=False)["input_ids"]) == 199  # + BOS = 200
    rows = [{"prompt": words(199), "chosen": " " + words(n - 1), "rejected": " " + words(50)} for n in (900, 1100)]
    trl_rows = [trl_tokenize_row(tok, row, max_length=1024) for row in rows]
    ours, _ = prepare_preference_dataset(dataset(rows), tok, **LIMITS)
    for row in ours:
        assert len(row["prompt_input_ids"]) == 200 and len(row["prompt_input_ids"] + row["chosen_input_ids"]) == 1024
        assert len(row["rejected_input_ids"]) == 51
    lengths = [(len(r["chosen_input_ids"]), len(r["rejected_input_ids"])) for r in trl_rows]
    if Version(trl.__version__) >= Version("1.15"):  # PR #6588: each answer cut to max_length - its prompt
        assert lengths == [(1024, 251), (1024, 251)]
        for mine, theirs in zip(ours, trl_rows, strict=True):
            assert mine["prompt_input_ids"] + mine["chosen_input_ids"] == theirs["chosen_input_ids"]
            assert mine["prompt_input_ids"] + mine["rejected_input_ids"] == theirs["rejected_input_ids"]
    else:  # both answers cut to max_length - the longer one
        assert lengths == [(324, 251), (1224, 200)]


def test_truncate_pair_long_prompt_that_fits_is_kept():
    prompt, chosen, rejected, prompt_cut, completion_cut = truncate_pair(ids(700), ids(100), ids(90), **LIMITS)
    assert (prompt, chosen, rejected, prompt_cut, completion_cut) == (ids(700), ids(100), ids(90), False, False)


def test_truncate_pair_cuts_the_prompt_from_the_left_keeping_bos():
    # 900 + 300 = 1200: 176 prompt tokens go, from the left, after the BOS; the answer stays whole.
    prompt_ids = [BOS] + ids(899)
    prompt, chosen, _, prompt_cut, completion_cut = truncate_pair(
        prompt_ids, ids(300), ids(10), bos_token_id=BOS, **LIMITS
    )
    assert prompt == [BOS] + prompt_ids[-723:] and len(prompt) + len(chosen) == 1024
    assert (prompt_cut, completion_cut) == (True, False)


def test_truncate_pair_prompt_floor_then_completions():
    # 2000 + 800: the prompt may only go down to 512, then the answers get 1024 - 512.
    prompt, chosen, rejected, *_ = truncate_pair(ids(2000), ids(800), ids(600), **LIMITS)
    assert (len(prompt), len(chosen), len(rejected)) == (512, 512, 512) and prompt == ids(2000)[-512:]


def test_truncate_pair_max_completion_length_and_no_max_length():
    limits = dict(max_length=None, max_prompt_length=None, max_completion_length=64)
    prompt, chosen, rejected, prompt_cut, completion_cut = truncate_pair(ids(5000), ids(100), ids(30), **limits)
    assert (len(prompt), len(chosen), len(rejected), prompt_cut, completion_cut) == (5000, 64, 30, False, True)


def test_truncate_pair_prompt_never_cut_without_max_prompt_length_raises_when_nothing_fits():
    limits = dict(max_length=1024, max_prompt_length=None, max_completion_length=None)
    assert len(truncate_pair(ids(1000), ids(100), ids(5), **limits)[0]) == 1000
    with pytest.raises(ValueError, match="the prompt has 1024 tokens and `max_length` is 1024"):
        truncate_pair(ids(1024), ids(5), ids(5), **limits)


def test_max_prompt_length_must_be_below_max_length():
    with pytest.raises(ValueError, match=r"`max_prompt_length` .* must be smaller than `max_length` .*got 1024 and 1024"):
        prepare_preference_dataset(dataset([{"chosen": "a b", "rejected": "a c"}]), None, max_prompt_length=1024)


def test_common_prefix_and_split_prompt_ids():
    assert common_prefix_length([1, 2, 3], [1, 2, 3, 4], [1, 2, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert split_prompt_ids([1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 5, 6]) == ([1, 2, 3], [4], [5, 6])
    # a boundary merge: the prompt's last token 3 became 9 in one full text
    assert split_prompt_ids([1, 2, 3], [1, 2, 9, 4], [1, 2, 3, 5]) == ([1, 2], [9, 4], [3, 5])


def test_bpe_merge_at_the_boundary_moves_into_the_completions():
    # "The sky is " alone ends in a lone-space token; in "The sky is blue." the space joins "Ġblue".
    tok = smollm2_tokenizer()
    alone = tok("The sky is ", add_special_tokens=False)["input_ids"]
    out, _ = prepare_preference_dataset(
        dataset([{"prompt": "The sky is ", "chosen": "blue.", "rejected": "green."}]), tok
    )
    row = out[0]
    assert row["prompt_input_ids"] == [BOS] + alone[:-1]
    assert tok.decode(row["chosen_input_ids"]) == " blue.<|im_end|>"
    assert (
        row["prompt_input_ids"][1:] + row["chosen_input_ids"][:-1]
        == tok("The sky is blue.", add_special_tokens=False)["input_ids"]
    )


def test_ensure_eos_ignores_whitespace_after_the_end_token():
    is_blank = {NEWLINE: True, 216: True}.get  # "\n" and " " decode to whitespace; others do not
    assert ensure_eos([5, EOS, NEWLINE], EOS, lambda t: is_blank(t, False)) == [5, EOS, NEWLINE]
    assert ensure_eos([5, NEWLINE], EOS, lambda t: is_blank(t, False)) == [5, NEWLINE, EOS]
    assert ensure_eos([5], EOS, lambda t: False) == [5, EOS]
    assert ensure_eos([], EOS, lambda t: False) == [EOS]
    assert ensure_eos([5], None, lambda t: False) == [5]


def test_trl_double_end_token_on_chatml_and_ours_single():
    from trl.data_utils import maybe_apply_chat_template

    tok, row = smollm2_tokenizer(), conversational_rows()[0]
    trl = trl_tokenize_row(tok, maybe_apply_chat_template(row, tok), max_length=4096)
    assert trl["chosen_input_ids"][-3:] == [EOS, NEWLINE, EOS]  # "<|im_end|>\n<|im_end|>"
    ours, _ = prepare_preference_dataset(dataset([row]), tok, max_length=None)
    assert ours[0]["chosen_input_ids"][-3:] != [EOS, NEWLINE, EOS]
    assert ours[0]["chosen_input_ids"][-2:] == [EOS, NEWLINE]
    # everything before TRL's extra token is the same sequence
    assert ours[0]["prompt_input_ids"] + ours[0]["chosen_input_ids"] == trl["chosen_input_ids"][:-1]


def test_sharegpt_ids_decode_to_the_rendered_text():
    tok, rows = smollm2_tokenizer(), conversational_rows()
    out, stats = prepare_preference_dataset(dataset(rows), tok, max_length=None)
    assert out.column_names == list(OUTPUT_COLUMNS) and len(out) == len(rows) == stats.pairs
    assert stats.truncated_pairs == 0
    for row, pair in zip(rows, out, strict=True):
        prompt, text = pair["prompt_input_ids"], tok.decode(pair["prompt_input_ids"])
        assert prompt[0] == BOS and prompt[1] != BOS  # the template's <|im_start|> is the BOS: not doubled
        # one prompt, shared by chosen and rejected, exactly as the template renders it
        assert text == tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert tok.decode(pair["chosen_input_ids"]) == row["chosen"][0]["content"] + "<|im_end|>\n"
        assert tok.decode(pair["rejected_input_ids"]) == row["rejected"][0]["content"] + "<|im_end|>\n"
        for message in row["prompt"]:  # system turn and multi-turn history are in the prompt
            assert f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>" in text
        has_system = row["prompt"][0]["role"] == "system"
        assert (SMOLLM2_DEFAULT_SYSTEM in text) != has_system  # the default system turn only when none given


def test_sharegpt_truncated_to_max_length(caplog):
    tok, rows = smollm2_tokenizer(), conversational_rows()
    whole, _ = prepare_preference_dataset(dataset(rows), tok, max_length=None)
    with caplog.at_level(logging.INFO, logger="merlina_orpo_plugin.data"):
        out, stats = prepare_preference_dataset(dataset(rows), tok, source="sharegpt_en.json", **LIMITS)
    assert len(out) == len(rows) and stats.truncated_pairs > 0 and stats.max_sequence_tokens == 1024
    generation_prompt = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    cut = {"prompt": 0, "completion": 0}
    for full, pair in zip(whole, out, strict=True):
        prompt = pair["prompt_input_ids"]
        for answer in ("chosen_input_ids", "rejected_input_ids"):
            assert len(prompt) + len(pair[answer]) <= 1024
            assert full[answer][: len(pair[answer])] == pair[answer]  # cut from the right only
        assert prompt[0] == BOS and prompt[-len(generation_prompt) :] == generation_prompt  # end kept
        assert prompt[1:] == full["prompt_input_ids"][len(full["prompt_input_ids"]) - len(prompt) + 1 :]
        cut["prompt"] += prompt != full["prompt_input_ids"]
        cut["completion"] += (
            pair["chosen_input_ids"] != full["chosen_input_ids"]
            or pair["rejected_input_ids"] != full["rejected_input_ids"]
        )
        if len(full["prompt_input_ids"]) > 512:  # only cut when needed, never below 512
            assert len(prompt) >= 512
    assert (stats.prompt_truncated, stats.completion_truncated) == (cut["prompt"], cut["completion"])
    assert f"sharegpt_en.json: {len(rows)} pairs (conversational layout), {stats.truncated_pairs} truncated" in caplog.text


def test_ultrafeedback_implicit_prompt_is_the_user_turn():
    tok, rows = smollm2_tokenizer(), ultrafeedback_rows()
    out, stats = prepare_preference_dataset(dataset(rows), tok, max_length=None)
    assert len(out) == len(rows) and stats.layout == "implicit prompt (conversations)"
    for row, pair in zip(rows, out, strict=True):
        user = [{"role": "user", "content": row["prompt"]}]
        assert tok.decode(pair["prompt_input_ids"]) == tok.apply_chat_template(
            user, tokenize=False, add_generation_prompt=True
        )
        assert tok.decode(pair["chosen_input_ids"]) == row["chosen"][1]["content"] + "<|im_end|>\n"


def test_stack_exchange_standard_long_answers():
    tok, rows = smollm2_tokenizer(), standard_rows()
    out, stats = prepare_preference_dataset(dataset(rows), tok, max_length=512, max_prompt_length=128)
    assert len(out) == len(rows) and stats.completion_truncated > 0 and stats.max_sequence_tokens == 512
    for pair in out:
        prompt = pair["prompt_input_ids"]
        assert prompt[0] == BOS and tok.decode(prompt[-4:]).endswith("\n\nAnswer:")  # the space went to the answer
        assert all(len(prompt) + len(pair[a]) <= 512 for a in ("chosen_input_ids", "rejected_input_ids"))
        if len(prompt) + len(pair["chosen_input_ids"]) < 512:
            assert pair["chosen_input_ids"][-1] == EOS  # uncut answers end with EOS; cut ones do not


def test_tokenized_layout_is_only_truncated():
    rows = [{"prompt_input_ids": ids(10), "chosen_input_ids": ids(30, 500), "rejected_input_ids": [7], "note": "x"}]
    tok = smollm2_tokenizer()
    out, stats = prepare_preference_dataset(dataset(rows), tok, max_length=20, max_prompt_length=4)
    assert out.column_names == list(OUTPUT_COLUMNS)  # other columns are not carried
    # 10 + 30 > 20: the prompt gives 6 tokens (down to 4), the answer is cut to 20 - 4; no BOS/EOS added
    assert out[0] == {"prompt_input_ids": ids(4, 106), "chosen_input_ids": ids(16, 500), "rejected_input_ids": [7]}
    assert (stats.truncated_pairs, stats.prompt_truncated, stats.completion_truncated) == (1, 1, 1)


def test_num_proc_gives_the_same_ids():
    tok, rows = smollm2_tokenizer(), conversational_rows()[:24]
    one, _ = prepare_preference_dataset(dataset(rows), tok, batch_size=5)
    two, _ = prepare_preference_dataset(dataset(rows), tok, batch_size=5, num_proc=2)
    assert one[:] == two[:]


def test_cache_fingerprint_follows_the_inputs():
    # We key the datasets cache ourselves (hashing the tokenizer through dill costs seconds):
    # equal inputs must give the same key, a changed limit a different one.
    tok, data = smollm2_tokenizer(), dataset(ultrafeedback_rows())
    first, _ = prepare_preference_dataset(data, tok, **LIMITS)
    again, _ = prepare_preference_dataset(data, tok, **LIMITS)
    other, _ = prepare_preference_dataset(data, tok, **{**LIMITS, "max_length": 768})
    assert first._fingerprint == again._fingerprint != other._fingerprint


def test_empty_dataset():
    import datasets

    empty = datasets.Dataset.from_dict(
        {"chosen": [], "rejected": []},
        features=datasets.Features({"chosen": datasets.Value("string"), "rejected": datasets.Value("string")}),
    )
    out, stats = prepare_preference_dataset(empty, smollm2_tokenizer())
    assert out.column_names == list(OUTPUT_COLUMNS) and len(out) == 0 and stats.pairs == 0


# A ChatML variant whose generation prompt is not a prefix of the rendered answer turn (as with
# templates that open a reasoning block only for generation): the prompt text is not a string
# prefix of the full conversation, so any split by string length cuts into the answer.
GENERATION_DIFFERS = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def test_template_that_renders_the_prompt_differently_splits_by_tokens():
    tokenizer = smollm2_tokenizer()
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)  # a copy we may change
    tokenizer.chat_template = GENERATION_DIFFERS
    row = {"prompt": [{"role": "user", "content": "Capital of France?"}],
           "chosen": [{"role": "assistant", "content": "Paris."}],
           "rejected": [{"role": "assistant", "content": "Lyon."}]}
    prompt_text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    assert not full_text.startswith(prompt_text)
    assert full_text[len(prompt_text):] == "im_end|>\n"  # string-length slicing loses the whole answer

    out, _ = prepare_preference_dataset(dataset([row]), tokenizer, **LIMITS)
    pair = out[0]
    assert tokenizer.decode(pair["prompt_input_ids"] + pair["chosen_input_ids"]) == full_text  # BOS already there
    # The shared part is the prompt: everything up to the point where the two renderings part.
    assert tokenizer.decode(pair["prompt_input_ids"]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(pair["chosen_input_ids"]) == "Paris.<|im_end|>\n"
    assert tokenizer.decode(pair["rejected_input_ids"]) == "Lyon.<|im_end|>\n"
