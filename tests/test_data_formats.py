"""Row layouts -> text: layout detection, implicit-prompt extraction and chat-template rendering.

Checked against TRL 1.9's `extract_prompt` / `maybe_apply_chat_template` (the reference
behaviour) on the project's rows in the H4 UltraFeedback and LLaMA-Factory ShareGPT layouts
(tests/assets/pairs), rendered with the real SmolLM2 ChatML template; the places where we
deliberately differ from TRL are pinned with TRL's output.
"""

from __future__ import annotations

import copy

import pytest
from testkit import SMOLLM2_DEFAULT_SYSTEM, conversational_rows, dataset, smollm2_tokenizer
from testkit import standard_rows, ultrafeedback_rows

from merlina_orpo_plugin.data.formats import (
    clean_messages,
    render_batch,
    render_conversation,
    split_message_prompt,
    split_text_prompt,
)
from merlina_orpo_plugin.data.layouts import Layout, detect_layout

USER = {"role": "user", "content": "What color is the sky?"}
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}


@pytest.mark.parametrize(
    "row, layout",
    [
        ({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}, Layout.STANDARD),
        ({"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]}, Layout.CONVERSATIONAL),
        ({"chosen": "The sky is blue.", "rejected": "The sky is green."}, Layout.IMPLICIT_TEXT),
        ({"chosen": [USER, BLUE], "rejected": [USER, GREEN]}, Layout.IMPLICIT_CONVERSATIONAL),
        # H4 ultrafeedback_binarized: a string prompt beside whole conversations is ignored.
        ({"prompt": "What color?", "chosen": [USER, BLUE], "rejected": [USER, GREEN]}, Layout.IMPLICIT_CONVERSATIONAL),
        ({"prompt_input_ids": [1, 5], "chosen_input_ids": [6, 2], "rejected_input_ids": [7, 2]}, Layout.TOKENIZED),
        # token columns win over text columns left beside them
        (
            {
                "prompt": "a",
                "chosen": "b",
                "rejected": "c",
                "prompt_input_ids": [1],
                "chosen_input_ids": [2],
                "rejected_input_ids": [3],
            },
            Layout.TOKENIZED,
        ),
    ],
)
def test_detect_layout_from_columns_and_types(row, layout):
    assert detect_layout(dataset([row, row])) is layout


def test_detect_layout_h4_rows_are_implicit():
    assert detect_layout(dataset(ultrafeedback_rows())) is Layout.IMPLICIT_CONVERSATIONAL


def test_unknown_layout_lists_the_accepted_ones_and_the_columns_found():
    rows = [{"question": "q", "response_j": "a", "response_k": "b"}]
    with pytest.raises(
        ValueError, match=r"columns found: `question`, `response_j`, `response_k`.*Accepted layouts: standard"
    ):
        detect_layout(dataset(rows))


def test_unknown_layout_names_the_missing_column():
    with pytest.raises(ValueError, match=r"Closest layout: implicit prompt, missing `rejected`"):
        detect_layout(dataset([{"prompt": "p", "chosen": "c", "reject": "r"}]))


def test_message_prompt_with_string_answers_is_rejected():
    with pytest.raises(ValueError, match=r"`prompt` is a list of messages but `chosen` / `rejected` are not"):
        detect_layout(dataset([{"prompt": [USER], "chosen": "blue", "rejected": "green"}]))


@pytest.mark.parametrize(
    "chosen, rejected, expected",
    [
        # TRL's example: the space before the answer goes to the completions.
        ("The sky is blue.", "The sky is green.", ("The sky is", " blue.", " green.")),
        # TRL gives ("The sky is b", "right.", "lue."): the split falls inside a word; we back off.
        ("The sky is bright.", "The sky is blue.", ("The sky is", " bright.", " blue.")),
        # one answer a prefix of the other: neither completion may be empty
        ("Answer: yes", "Answer: yes, really", ("Answer:", " yes", " yes, really")),
        ("2+2= 4", "2+2= 45", ("2+2=", " 4", " 45")),
        # a clean split at punctuation is kept
        ("Human: hi\n\nAssistant: Sure.", "Human: hi\n\nAssistant: No!", ("Human: hi\n\nAssistant:", " Sure.", " No!")),
        ("yes", "no", ("", "yes", "no")),
    ],
)
def test_split_text_prompt(chosen, rejected, expected):
    assert split_text_prompt(chosen, rejected) == expected
    prompt, c, r = expected
    assert prompt + c == chosen and prompt + r == rejected  # nothing lost or added


def test_split_text_prompt_matches_trl_on_a_clean_split_and_differs_inside_a_word():
    from trl.data_utils import extract_prompt

    clean = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    assert tuple(extract_prompt(clean).values()) == split_text_prompt(**clean)
    inside = {"chosen": "The sky is bright.", "rejected": "The sky is blue."}
    assert extract_prompt(inside)["prompt"] == "The sky is b"  # TRL splits the word
    assert split_text_prompt(**inside)[0] == "The sky is"


def test_identical_pairs_split_before_their_last_word_or_message():
    """Identical pairs are legal (counted by the statistics): each completion keeps its last word,
    or its last message, as TRL's `extract_prompt` keeps its last character / message."""
    from trl.data_utils import extract_prompt

    assert split_text_prompt("The sky is blue.", "The sky is blue.") == ("The sky is", " blue.", " blue.")
    assert split_text_prompt("same", "same") == ("", "same", "same")
    assert split_message_prompt([USER, BLUE], [USER, BLUE]) == ([USER], [BLUE], [BLUE])
    trl = extract_prompt({"chosen": [USER, BLUE], "rejected": [USER, BLUE]})
    assert (trl["prompt"], trl["chosen"], trl["rejected"]) == ([USER], [BLUE], [BLUE])


def test_split_message_prompt_matches_trl_on_h4_rows():
    from trl.data_utils import extract_prompt

    for row in ultrafeedback_rows():
        ours = split_message_prompt(row["chosen"], row["rejected"])
        trl = extract_prompt({"chosen": row["chosen"], "rejected": row["rejected"]})
        assert ours == (trl["prompt"], trl["chosen"], trl["rejected"])
        assert ours[0] == [{"role": "user", "content": row["prompt"]}]  # the string prompt is the user turn


def test_split_message_prompt_keeps_a_message_in_each_completion():
    # rejected continues the conversation: the last shared turn moves to the completions
    follow_up = {"role": "user", "content": "Sure?"}
    prompt, chosen, rejected = split_message_prompt([USER, BLUE], [USER, BLUE, follow_up, GREEN])
    assert (prompt, chosen, rejected) == ([USER], [BLUE], [BLUE, follow_up, GREEN])


def test_clean_messages_drops_arrow_filled_none_keys():
    # Arrow gives every message every key seen in the column; `tool_calls=None` would confuse templates.
    rows = dataset(
        [{"m": [{"role": "user", "content": "hi"}]}, {"m": [{"role": "user", "content": "x", "tool_calls": "t"}]}]
    )
    assert rows[0]["m"] == [{"role": "user", "content": "hi", "tool_calls": None}]
    assert clean_messages(rows[0]["m"]) == [{"role": "user", "content": "hi"}]


def test_render_conversation_chatml_with_system_and_default_system():
    tok = smollm2_tokenizer()
    system = {"role": "system", "content": "Be brief."}
    prompt, chosen, _ = render_conversation(tok, [system, USER], [BLUE], [GREEN])
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat color is the sky?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chosen == prompt + "It is blue.<|im_end|>\n"
    # without a system turn the SmolLM2 template injects its default one
    prompt, _, _ = render_conversation(tok, [USER], [BLUE], [GREEN])
    assert prompt.startswith(f"<|im_start|>system\n{SMOLLM2_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n")


def test_render_conversation_continues_an_assistant_prefill():
    tok = smollm2_tokenizer()
    prefill = {"role": "assistant", "content": "It is"}
    prompt, chosen, _ = render_conversation(tok, [USER, prefill], [BLUE], [GREEN])
    assert prompt.endswith("<|im_start|>assistant\nIt is")  # no end token, no new generation prompt


def test_render_batch_sharegpt_rows_match_trl_text():
    """Our full text is TRL's prompt + chosen after `maybe_apply_chat_template`, for every row."""
    from trl.data_utils import maybe_apply_chat_template

    tok, rows = smollm2_tokenizer(), conversational_rows()
    batch = dataset(rows)[:]
    prompts, fulls_chosen, fulls_rejected = render_batch(batch, Layout.CONVERSATIONAL, tok)
    for i, row in enumerate(rows):
        trl = maybe_apply_chat_template(row, tok)
        assert prompts[i] == trl["prompt"]
        assert fulls_chosen[i] == trl["prompt"] + trl["chosen"]
        assert fulls_rejected[i] == trl["prompt"] + trl["rejected"]
        assert trl["chosen"] == row["chosen"][0]["content"] + "<|im_end|>\n"


def test_render_batch_multi_turn_history_in_prompt():
    tok, rows = smollm2_tokenizer(), conversational_rows()
    i = next(i for i, r in enumerate(rows) if len(r["prompt"]) >= 5)
    prompts, _, _ = render_batch(dataset(rows[i : i + 1])[:], Layout.CONVERSATIONAL, tok)
    for message in rows[i]["prompt"]:
        assert f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n" in prompts[0]


def test_render_batch_standard_and_implicit_text():
    tok, rows = smollm2_tokenizer(), standard_rows()[:3]
    prompts, fulls, _ = render_batch(dataset(rows)[:], Layout.STANDARD, tok)
    assert prompts[0].startswith("Question: ") and fulls[0] == rows[0]["prompt"] + rows[0]["chosen"]
    implicit = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows]
    prompts, fulls, _ = render_batch(dataset(implicit)[:], Layout.IMPLICIT_TEXT, tok)
    assert fulls[0] == implicit[0]["chosen"]
    assert prompts[0] == rows[0]["prompt"].rstrip(" ")  # the space before the answer goes to the answer


def test_render_batch_tools_json_string_reaches_the_template():
    tok = smollm2_tokenizer()
    template = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}[{{ tools[0].name }}]{% endif %}"
    tok_with_tools = copy.copy(tok)  # shallow: shares the backend, own template
    tok_with_tools.chat_template = template
    rows = [{"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN], "tools": '[{"name": "weather"}]'}]
    prompts, fulls, _ = render_batch(dataset(rows)[:], Layout.CONVERSATIONAL, tok_with_tools)
    assert prompts[0].endswith("[weather]") and fulls[0].endswith("[weather]")
    assert tok.chat_template != template  # the shared tokenizer is untouched
