"""The data path as one straight line, and public datasets as they come.

Checked: a declared layout is used as declared (never detected); on the Axolotl path each row is
checked exactly once and the pipeline neither detects nor checks again (spies on the real
functions); an empty answer tokenises to what TRL 1.9's `ORPOTrainer.tokenize_row` makes of it
(the same ids in the standard layout; on ChatML TRL's ids less the second end token it appends, as
for every answer); the project's files in the column layouts of Anthropic/hh-rlhf (its four
subsets), HuggingFaceH4/ultrafeedback_binarized, Intel/orca_dpo_pairs, argilla/dpo-mix-7k and
argilla/distilabel-capybara-dpo-7k-binarized (tests/assets/pairs) go through the strategies, the
check and the real SmolLM2 tokenizer, with their empty completions and identical pairs counted
(against a count on the raw rows), not refused; only structurally broken rows stop, naming the
file, the row and the field.
"""

from __future__ import annotations

import logging

import pytest
from testkit import dataset, pairs_rows, quirks, smollm2_tokenizer
from test_data_tokenize import trl_tokenize_row

from merlina_orpo_plugin.data import Layout, prepare_preference_dataset
from merlina_orpo_plugin.data import pipeline as pipeline_module
from merlina_orpo_plugin.integration import mapping
from merlina_orpo_plugin.integration.data_options import DEFAULT_SEED, DataOptions

EOS, NEWLINE = 2, 198  # SmolLM2: <|im_end|> is the EOS, "\n"
OPTIONS = DataOptions.from_cfg({"sequence_len": 2048})


def _through_strategy(rows: list[dict], type_name: str, *, skip_bad_rows: bool = False, **options):
    """The Axolotl path for one entry, without the file loader: strategy + check, then the pipeline."""
    entry = {"path": f"data/{type_name}.jsonl", "type": type_name, **options}
    checked, skipped = mapping.apply_strategy(
        dataset(rows), entry, source=entry["path"], skip_bad_rows=skip_bad_rows
    )
    tokenised, stats = mapping.tokenise_pairs(checked, OPTIONS, smollm2_tokenizer())
    return checked, tokenised, stats, skipped


def test_a_declared_layout_is_used_not_detected():
    rows = dataset([{"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}])
    _, stats = prepare_preference_dataset(rows, smollm2_tokenizer(), layout="text")  # a strategy's name for it
    assert stats.layout == "standard"
    # Declared conversational, the string columns are reported as such instead of re-detected.
    with pytest.raises(ValueError, match=r"^row 0: `prompt` must be a list of messages in the conversational"):
        prepare_preference_dataset(rows, smollm2_tokenizer(), layout=Layout.CONVERSATIONAL)


def test_the_axolotl_path_checks_each_row_once_and_never_detects(monkeypatch):
    checks = []
    real_check = mapping.check_row
    monkeypatch.setattr(mapping, "check_row", lambda pair, layout: checks.append(layout) or real_check(pair, layout))

    def forbidden(*args, **kwargs):
        raise AssertionError("the pipeline detected or checked rows a strategy had declared and checked")

    monkeypatch.setattr(pipeline_module, "detect_layout", forbidden)
    monkeypatch.setattr(pipeline_module, "validate_preference_dataset", forbidden)
    rows = pairs_rows("hh_rlhf.jsonl")
    checked, tokenised, stats, _ = _through_strategy(rows, "hh_rlhf")
    assert checks == [Layout.CONVERSATIONAL] * len(rows)  # once per row, in the declared layout
    assert checked.layout is Layout.CONVERSATIONAL and (stats.layout, stats.pairs) == ("conversational", len(rows))


def test_an_empty_answer_is_the_end_token_alone_as_trl_tokenises_it():
    tok = smollm2_tokenizer()
    row = {"prompt": "Question: what is 2+2?\n\nAnswer:", "chosen": " 4", "rejected": ""}
    trl = trl_tokenize_row(tok, row, max_length=1024)
    (ours,), stats = prepare_preference_dataset(dataset([row]), tok)
    assert ours["rejected_input_ids"] == [EOS]
    assert ours["prompt_input_ids"] + ours["rejected_input_ids"] == trl["rejected_input_ids"]  # TRL's exact ids
    assert ours["prompt_input_ids"] + ours["chosen_input_ids"] == trl["chosen_input_ids"]
    assert stats.empty_completions == 1


def test_an_empty_answer_without_an_eos_token_is_refused_naming_the_row():
    # The tokenised completion must never be empty (the loss would score no token); only a tokenizer
    # without EOS can leave it so.
    tok = smollm2_tokenizer()
    tok = tok.__class__.from_pretrained(tok.name_or_path)  # a copy we may change
    tok.eos_token = None
    rows = dataset([{"prompt": "Q:", "chosen": " a", "rejected": " b"},
                    {"prompt": "Q:", "chosen": " a", "rejected": ""}])
    with pytest.raises(ValueError, match=r"^row 1 of x\.jsonl: `rejected` is empty and the tokenizer has no EOS token"):
        prepare_preference_dataset(rows, tok, source="x.jsonl")


def test_an_empty_chat_answer_is_the_templates_turn_end_as_trl_less_its_second_end_token():
    from trl.data_utils import maybe_apply_chat_template

    tok = smollm2_tokenizer()
    row = {"prompt": [{"role": "user", "content": "Say nothing."}],
           "chosen": [{"role": "assistant", "content": ""}],
           "rejected": [{"role": "assistant", "content": "Something."}]}
    trl = trl_tokenize_row(tok, maybe_apply_chat_template(row, tok), max_length=1024)
    (ours,), stats = prepare_preference_dataset(dataset([row]), tok)
    assert ours["chosen_input_ids"] == [EOS, NEWLINE]  # "<|im_end|>\n": the empty turn as ChatML closes it
    assert trl["chosen_input_ids"][-3:] == [EOS, NEWLINE, EOS]
    assert ours["prompt_input_ids"] + ours["chosen_input_ids"] == trl["chosen_input_ids"][:-1]
    assert (stats.empty_completions, stats.identical_pairs) == (1, 0)


PUBLIC = {  # (file, dataset type): the public dataset's layout, read by the type its users name
    "hh-rlhf (4 subsets)": ("hh_rlhf.jsonl", "hh_rlhf"),
    "ultrafeedback_binarized": ("ultrafeedback_h4.jsonl", "chat_template"),
    "ultrafeedback_binarized, argilla type": ("ultrafeedback_h4.jsonl", "chat_template.argilla"),
    "orca_dpo_pairs": ("orca_dpo_pairs.jsonl", "chat_template.intel"),
    "dpo-mix-7k": ("argilla_dpo_mix.jsonl", "chat_template.argilla"),
    "dpo-mix-7k, implicit prompt": ("argilla_dpo_mix.jsonl", "chat_template"),
    "distilabel-capybara": ("capybara_argilla.jsonl", "chat_template.argilla"),
}


@pytest.mark.parametrize("name", list(PUBLIC))
def test_public_layouts_prepare_with_their_quirks_counted(name):
    file_name, type_name = PUBLIC[name]
    rows = pairs_rows(file_name)
    _, tokenised, stats, skipped = _through_strategy(rows, type_name)
    assert skipped == [] and (stats.pairs, len(tokenised)) == (len(rows), len(rows))
    assert (stats.empty_completions, stats.identical_pairs) == quirks(rows)
    tok = smollm2_tokenizer()
    for pair in tokenised:
        assert tok.decode(pair["prompt_input_ids"]).endswith("<|im_start|>assistant\n")
        for completion in (pair["chosen_input_ids"], pair["rejected_input_ids"]):
            assert completion and tok.decode(completion).endswith("<|im_end|>\n")  # never empty


def test_hh_rlhf_quirks_are_in_the_file_and_each_empty_answer_is_the_turn_end_alone():
    rows = pairs_rows("hh_rlhf.jsonl")
    empty, identical = quirks(rows)
    assert empty >= 6 and identical >= 3  # both spellings of an empty final turn, identical pairs
    _, tokenised, stats, _ = _through_strategy(rows, "hh_rlhf")
    ends = [ids for pair in tokenised for ids in (pair["chosen_input_ids"], pair["rejected_input_ids"])]
    assert sum(ids == [EOS, NEWLINE] for ids in ends) == stats.empty_completions == empty


def test_identical_pairs_are_warned_about(caplog):
    rows = pairs_rows("hh_rlhf.jsonl")
    _, identical = quirks(rows)
    with caplog.at_level(logging.INFO, logger="merlina_orpo_plugin.data"):
        _through_strategy(rows, "hh_rlhf")
    (record,) = [r for r in caplog.records if r.name == "merlina_orpo_plugin.data"]
    assert record.levelno == logging.WARNING
    assert f"data/hh_rlhf.jsonl: {len(rows)} pairs (conversational layout)" in record.getMessage()
    assert f"{identical} pairs with identical chosen and rejected (they teach no preference" in record.getMessage()


BROKEN = [  # (a bad row, its problem) at row 1 of data/hh_rlhf.jsonl
    ({"chosen": None, "rejected": "\n\nHuman: Hi\n\nAssistant: Go."}, r"`chosen` is None"),  # missing
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hey\n\nAssistant: Go."},
     r"`chosen` and `rejected` have different conversations before their final Assistant turns"),
]


@pytest.mark.parametrize("bad, message", BROKEN, ids=["missing", "different-prompts"])
def test_only_structurally_broken_rows_stop_naming_file_row_and_field(bad, message):
    good = {key: pairs_rows("hh_rlhf.jsonl")[0][key] for key in ("chosen", "rejected")}
    rows = [good, bad, good]
    with pytest.raises(ValueError, match=rf"^row 1 of data/hh_rlhf\.jsonl: {message}$"):
        _through_strategy(rows, "hh_rlhf")
    _, tokenised, stats, skipped = _through_strategy(rows, "hh_rlhf", skip_bad_rows=True)
    assert [index for index, _ in skipped] == [1] and stats.pairs == len(tokenised) == 2


def test_a_wrongly_typed_field_stops_naming_file_row_and_field():
    # Arrow holds one type per column, so the whole column is ints and row 0 is reported.
    with pytest.raises(ValueError, match=r"^row 0 of data/prompt_pairs\.jsonl: `chosen` must be a string, got int"):
        _through_strategy([{"prompt": "Q", "chosen": 7, "rejected": "x"}], "prompt_pairs")


def test_seed_zero_stays_zero():
    def seed(cfg):
        return DataOptions.from_cfg(cfg).seed

    assert seed({"seed": 0}) == 0 and seed({"seed": 7}) == 7
    assert seed({}) == seed({"seed": None}) == DEFAULT_SEED


def test_tokenisation_forks_workers_only_for_large_entries_and_more_than_one_process():
    """`Dataset.map(num_proc=1)` forks one worker (pickling, ~300 MiB) for no parallelism: None instead.
    The preprocessing-scale benchmark saw that step in the Axolotl path's memory from 10k to 50k rows."""
    from merlina_orpo_plugin.integration.data_options import MULTIPROCESS_ROWS, DataOptions

    large = MULTIPROCESS_ROWS + 1
    assert DataOptions(num_proc=4).num_proc_for(large) == 4
    assert DataOptions(num_proc=4).num_proc_for(MULTIPROCESS_ROWS) is None
    assert DataOptions(num_proc=1).num_proc_for(large) is None
    assert DataOptions(num_proc=None).num_proc_for(large) is None
