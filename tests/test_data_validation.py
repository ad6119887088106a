"""Row validation: every structurally broken row raises a ValueError naming the row, the field and
the source; empty answers and identical pairs are legal.

Checked against hand-written broken rows (one defect each, at a known index) and the project's
file in LLaMA-Factory's raw ShareGPT shape (tests/assets/pairs/sharegpt_en.json); messages are
pinned with `pytest.raises(match=...)`.
Validation must fail before any tokenisation: a tokenizer that raises if touched proves it.
"""

from __future__ import annotations

import datasets
import pytest
from testkit import conversational_rows, dataset, pairs_rows, smollm2_tokenizer

from merlina_orpo_plugin.data import Layout, detect_layout, prepare_preference_dataset, validate_preference_dataset
from merlina_orpo_plugin.data.validation import check_row

GOOD_TEXT = {"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}
USER = {"role": "user", "content": "Q?"}
YES, NO = {"role": "assistant", "content": "Yes."}, {"role": "assistant", "content": "No."}
GOOD_CHAT = {"prompt": [USER], "chosen": [YES], "rejected": [NO]}


class UntouchableTokenizer:
    """Fails the test if the pipeline tokenises anything before validation has passed."""

    bos_token_id, eos_token_id = 1, 2

    def __getattr__(self, name):
        raise AssertionError(f"tokenizer.{name} used before validation finished")

    def __call__(self, *args, **kwargs):
        raise AssertionError("tokenizer called before validation finished")


def rows_with(bad: dict, at: int, good: dict = GOOD_TEXT, n: int = 20) -> datasets.Dataset:
    """n good rows with row `at` updated by `bad`."""
    return dataset([{**good, **bad} if i == at else dict(good) for i in range(n)])


def prepare(rows: datasets.Dataset, source: str | None = None):
    return prepare_preference_dataset(rows, UntouchableTokenizer(), source=source)


def test_missing_field_names_row_and_source():
    with pytest.raises(ValueError, match=r"^row 17 of data/pairs\.jsonl: `rejected` is None$"):
        prepare(rows_with({"rejected": None}, at=17), source="data/pairs.jsonl")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"chosen": None}, r"^row 3: `chosen` is None$"),
        ({"prompt": ""}, r"^row 3: `prompt` is empty$"),  # a prompt is never optional in this layout
    ],
)
def test_standard_layout_field_problems(bad, message):
    with pytest.raises(ValueError, match=message):
        prepare(rows_with(bad, at=3))


def test_wrong_type_column():
    # Arrow holds one type per column, so ints fill the whole column; the first row is reported.
    rows = dataset([{"prompt": "Q?", "chosen": 7, "rejected": "No."}] * 4)
    with pytest.raises(ValueError, match=r"^row 0: `chosen` must be a string or a list of messages, got int$"):
        prepare(rows)


def test_missing_column_reports_the_layouts():
    rows = dataset([{"prompt": "Q?", "chosen": "Yes."}])
    with pytest.raises(ValueError, match=r"columns found: `prompt`, `chosen`\. Closest layout: .*missing `rejected`"):
        prepare(rows)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"rejected": []}, r"^row 5: `rejected` is empty$"),
        ({"rejected": None}, r"^row 5: `rejected` is None$"),
        ({"chosen": [{"role": "assistant"}]}, r"^row 5: `chosen` message 0 has no `content`$"),
        ({"prompt": [USER, {"content": "hi"}]}, r"^row 5: `prompt` message 1 has no `role`$"),
        ({"prompt": [{"role": "", "content": "hi"}]}, r"^row 5: `prompt` message 0 has an empty `role`$"),
    ],
)
def test_conversational_field_problems(bad, message):
    with pytest.raises(ValueError, match=message):
        prepare(rows_with(bad, at=5, good=GOOD_CHAT, n=8))


def test_sharegpt_messages_get_a_conversion_hint():
    turn = {"from": "gpt", "value": "Yes."}
    rows = dataset([{"prompt": [{"from": "human", "value": "Q?"}], "chosen": [turn], "rejected": [turn]}])
    with pytest.raises(
        ValueError, match=r"`prompt` message 0 has no `role` \(ShareGPT `from`/`value` messages must be converted"
    ):
        prepare(rows, source="dpo_en_demo.json")


def test_raw_sharegpt_file_is_rejected_with_the_row_and_the_type():
    """The file as stored (`conversations` + single-dict answers) is no accepted layout: say so at row 0."""
    rows = dataset(pairs_rows("sharegpt_en.json"))
    with pytest.raises(
        ValueError, match=r"^row 0 of sharegpt_en\.json: `chosen` must be a string or a list of messages, got dict$"
    ):
        prepare(rows, source="sharegpt_en.json")


def test_message_lists_where_strings_are_expected_and_back():
    # A single Arrow column cannot mix types, so the per-row check is exercised directly.
    problem = check_row({**GOOD_TEXT, "chosen": [USER]}, Layout.STANDARD)
    assert problem == "`chosen` must be a string in the standard layout like the other columns, got list"
    problem = check_row({**GOOD_CHAT, "rejected": "No."}, Layout.CONVERSATIONAL)
    assert (
        problem == "`rejected` must be a list of messages in the conversational layout like the other columns, got str"
    )
    problem = check_row({**GOOD_CHAT, "chosen": ["Yes."]}, Layout.CONVERSATIONAL)
    assert problem == "`chosen` message 0 must be a dict with `role` and `content`, got str"


@pytest.mark.parametrize(
    "rows, layout",
    [
        ([{**GOOD_TEXT, "chosen": ""}, {**GOOD_TEXT, "rejected": " \n"}], Layout.STANDARD),
        ([{**GOOD_CHAT, "rejected": [{"role": "assistant", "content": ""}]}], Layout.CONVERSATIONAL),
        ([{"chosen": [USER, {"role": "assistant", "content": ""}], "rejected": [USER, NO]}],
         Layout.IMPLICIT_CONVERSATIONAL),
        ([{"chosen": "Q? Same.", "rejected": "Q? Same."}], Layout.IMPLICIT_TEXT),
        ([{"chosen": [USER, YES], "rejected": [USER, YES]}], Layout.IMPLICIT_CONVERSATIONAL),
        ([{**GOOD_CHAT, "rejected": [YES]}], Layout.CONVERSATIONAL),
    ],
    ids=["empty-strings", "empty-message", "implicit-empty-answer", "identical-strings", "identical-conversations",
         "identical-explicit"],
)
def test_empty_answers_and_identical_pairs_are_legal(rows, layout):
    """Datasets as they come: an empty answer trains its end token alone, an identical pair is counted
    and warned about by the statistics; neither stops preprocessing."""
    data = dataset(rows)
    assert detect_layout(data) is layout
    checked = validate_preference_dataset(data, layout)
    assert (checked.dataset, checked.layout) == (data, layout)


def test_an_implicit_row_with_no_text_at_all_is_refused():
    # In the implicit layouts `chosen` is the whole conversation, prompt included: blank means missing.
    with pytest.raises(ValueError, match=r"^row 1: `chosen` is empty$"):
        prepare(rows_with({"chosen": "  "}, at=1, good={"chosen": "Q? Yes.", "rejected": "Q? No."}, n=3))


def test_content_of_the_wrong_type_is_refused():
    # One Arrow column cannot mix str and int contents, so the per-row check is exercised directly.
    problem = check_row({**GOOD_CHAT, "chosen": [{"role": "assistant", "content": 3}]}, Layout.CONVERSATIONAL)
    assert problem == "`chosen` message 0: `content` must be a string, got int"


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {"chosen_input_ids": [5, -1]},
            r"^row 1: `chosen_input_ids` must hold token ids \(ints >= 0\), got -1 \(int\) at position 1$",
        ),
        ({"prompt_input_ids": []}, r"^row 1: `prompt_input_ids` is empty$"),
        ({"rejected_input_ids": None}, r"^row 1: `rejected_input_ids` is None$"),
    ],
)
def test_tokenized_layout_problems(bad, message):
    good = {"prompt_input_ids": [1, 5], "chosen_input_ids": [6, 2], "rejected_input_ids": [7, 2]}
    with pytest.raises(ValueError, match=message):
        prepare(rows_with(bad, at=1, good=good, n=3))


def test_float_token_ids_are_rejected():
    problem = check_row(
        {"prompt_input_ids": [1], "chosen_input_ids": [2.5], "rejected_input_ids": [3]}, Layout.TOKENIZED
    )
    assert problem == "`chosen_input_ids` must hold token ids (ints >= 0), got 2.5 (float) at position 0"


def test_bad_row_deep_in_a_real_file_is_found_before_tokenising():
    rows = conversational_rows()
    rows[250] = {**rows[250], "rejected": [{"role": "assistant", "content": None}]}
    with pytest.raises(ValueError, match=r"^row 250 of sharegpt_en\.json: `rejected` message 0 has no `content`$"):
        prepare(dataset(rows), source="sharegpt_en.json")


def test_real_files_pass_validation():
    rows = dataset(conversational_rows())
    validate_preference_dataset(rows, detect_layout(rows), source="sharegpt_en.json")


def test_validation_row_numbers_follow_batches():
    # row 2503 sits in the third batch of 1000: the index must be global, not within the batch
    with pytest.raises(ValueError, match=r"^row 2503: `prompt` is None$"):
        validate_preference_dataset(rows_with({"prompt": None}, at=2503, n=2600), Layout.STANDARD, batch_size=1000)


def test_limits_that_leave_no_room_are_refused_before_any_row_is_read():
    # A prompt floor at max_length would leave no completion token; the options check says so
    # (the same message ORPOConfig and the YAML give), and unset the floor is half the limit.
    rows = rows_with({"prompt": "A longer question here?"}, at=1, n=3)
    with pytest.raises(ValueError, match=r"`max_prompt_length` \(YAML: `merlina_max_prompt_length`\) must be smaller"):
        prepare_preference_dataset(rows, smollm2_tokenizer(), max_length=4, max_prompt_length=4, source="x.jsonl")
    out, stats = prepare_preference_dataset(rows, smollm2_tokenizer(), max_length=4, source="x.jsonl")
    assert stats.prompt_truncated >= 1 and all(len(r["prompt_input_ids"]) == 2 for r in out if len(r["prompt_input_ids"]) > 2)
