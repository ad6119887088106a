"""Built-in dataset types: raw rows -> preference pairs, checked on the project's rows in public layouts.

Against: the 300 pairs in LLaMA-Factory's ShareGPT layout (`sharegpt`), the rows in
HuggingFaceH4/ultrafeedback_binarized's layout (`chat_template`, implicit prompt) and in
stack-exchange-paired's (`prompt_pairs` with renamed columns), all in tests/assets/pairs; and
hand-written rows that each show one feature of Anthropic HH-RLHF, Intel/orca_dpo_pairs and
argilla's ORPO datasets (their whole files go through the strategies in test_data_path.py). Axolotl
0.19's `prompt_strategies/orpo/chat_template.py` is the reference for `chat_template.argilla`.
Every type's output then goes through the real tokeniser (`prepare_preference_dataset`) with the
real SmolLM2 tokenizer.
"""

from __future__ import annotations

import copy
import pickle
from collections import Counter

import datasets
import pytest
from testkit import SHAREGPT_ROLES, pairs_rows, smollm2_tokenizer, ultrafeedback_rows

from merlina_orpo_plugin.data import prepare_preference_dataset
from merlina_orpo_plugin.strategies import CONVERSATIONAL, TEXT, RowError, get_strategy, reset_registry


@pytest.fixture(autouse=True)
def _fresh_registry():
    reset_registry()
    yield
    reset_registry()


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def system(content):
    return {"role": "system", "content": content}


def strategy(type_name, **options):
    return get_strategy({"path": "data/pairs.jsonl", "split": "train", "type": type_name, **options})


# Hand-written rows, each showing a feature of a public dataset's layout in a few lines.
HH_ROWS = [
    {  # one exchange; HH answers often start with a space after the colon
        "chosen": "\n\nHuman: What is a good way to keep cut flowers fresh?\n\nAssistant: Trim the stems at an angle "
        "and change the water every two days.",
        "rejected": "\n\nHuman: What is a good way to keep cut flowers fresh?\n\nAssistant: Put them in the freezer.",
    },
    {  # multi-turn: the history is the same in both, only the last Assistant turn differs
        "chosen": "\n\nHuman: Can you help me plan a trip to Lisbon?\n\nAssistant: Sure. How many days will you "
        "stay?\n\nHuman: Three days, in April.\n\nAssistant: Spend a day in Alfama and Baixa, one in Belém, and "
        "take the train to Sintra on the third.",
        "rejected": "\n\nHuman: Can you help me plan a trip to Lisbon?\n\nAssistant: Sure. How many days will you "
        "stay?\n\nHuman: Three days, in April.\n\nAssistant: Lisbon is the capital of Portugal.",
    },
    {  # the answer spans paragraphs: a blank line alone is not a turn marker
        "chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put the egg in boiling water.\n\nAfter nine "
        "minutes, cool it in cold water.",
        "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: Microwave it for five minutes.",
    },
]
INTEL_ROWS = [
    {
        "system": "",  # Intel/orca_dpo_pairs leaves most system prompts empty
        "question": "Translate to French: The library opens at nine.",
        "chosen": "La bibliothèque ouvre à neuf heures.",
        "rejected": "The library opens at nine in French.",
    },
    {
        "system": "You are an AI assistant. Think step by step and justify your answer.",
        "question": "Is 91 a prime number?",
        "chosen": "No. 91 = 7 x 13, so it has divisors other than 1 and itself.",
        "rejected": "Yes, 91 is prime.",
    },
]
ARGILLA_ROWS = [
    {  # single turn, the prompt column copying the user turn (argilla/dpo-mix-7k style)
        "system": "You are a concise assistant.",
        "prompt": "Name a primary colour.",
        "chosen": [user("Name a primary colour."), assistant("Red.")],
        "rejected": [user("Name a primary colour."), assistant("Green.")],
    },
    {  # multi-turn (distilabel-capybara style): `prompt` is the FIRST user turn
        "prompt": "What is 2 + 2?",
        "chosen": [user("What is 2 + 2?"), assistant("4."), user("And times 3?"), assistant("12.")],
        "rejected": [user("What is 2 + 2?"), assistant("4."), user("And times 3?"), assistant("7.")],
    },
]


# --- chat_template.argilla ---------------------------------------------------------------------


def test_argilla_single_turn_has_system_user_prompt_and_last_answers():
    pair = strategy("chat_template.argilla")(ARGILLA_ROWS[0])
    assert pair == {
        "prompt": [system("You are a concise assistant."), user("Name a primary colour.")],
        "chosen": [assistant("Red.")],
        "rejected": [assistant("Green.")],
    }


def test_argilla_multi_turn_keeps_history_and_every_user_turn():
    """Axolotl builds each user turn from `prompt` when the column exists (`get_prompt`), which would
    write "What is 2 + 2?" over "And times 3?"; we use `prompt` for the first user turn only."""
    pair = strategy("chat_template.argilla")(ARGILLA_ROWS[1])
    assert pair["prompt"] == [user("What is 2 + 2?"), assistant("4."), user("And times 3?")]
    assert pair["chosen"] == [assistant("12.")]
    assert pair["rejected"] == [assistant("7.")]


def test_argilla_prompt_column_is_the_user_turn_as_in_axolotl():
    row = {
        "prompt": "Say hi.",
        "chosen": [user("say hi"), assistant("Hi!")],
        "rejected": [user("say hi"), assistant("No.")],
    }
    assert strategy("chat_template.argilla")(row)["prompt"] == [user("Say hi.")]
    # Without a history the prompt column is the only user turn (Axolotl asserts an even turn count here).
    row = {"prompt": "Say hi.", "chosen": [assistant("Hi!")], "rejected": [assistant("No.")]}
    assert strategy("chat_template.argilla")(row)["prompt"] == [user("Say hi.")]


def test_argilla_reads_renamed_fields_mapped_keys_and_role_aliases():
    row = {
        "sys": "Be brief.",
        "better": [{"speaker": "human", "text": "Hi?"}, {"speaker": "ai", "text": "Hello."}],
        "worse": [{"speaker": "human", "text": "Hi?"}, {"speaker": "ai", "text": "Go away."}],
    }
    pair = strategy(
        "chat_template.argilla",
        field_system="sys",
        field_chosen="better",
        field_rejected="worse",
        message_property_mappings={"role": "speaker", "content": "text"},
        roles={"assistant": ["ai"]},
    )(row)
    assert pair == {
        "prompt": [system("Be brief."), user("Hi?")],
        "chosen": [assistant("Hello.")],
        "rejected": [assistant("Go away.")],
    }


@pytest.mark.parametrize(
    "change, field, match",
    [
        (
            {"rejected": [user("Other question?"), assistant("x")]},
            "rejected",
            "different conversation before its answer",
        ),
        ({"chosen": [user("Q"), assistant("A"), user("Q2")]}, "chosen", "must end with an assistant message"),
        (
            {"chosen": [assistant("A")], "rejected": [assistant("B")], "prompt": None},
            "chosen",
            "must hold a user turn before its answer",
        ),
        ({"chosen": [user("Q"), {"role": "assistant", "content": 5}]}, "chosen", r"message 1 `content` must be a string"),
        ({"chosen": None}, "chosen", "is None"),
        ({"chosen": []}, "chosen", "is empty"),
        ({"chosen": [{"role": "user"}, assistant("A")]}, "chosen", "message 0 has no `content`"),
        ({"chosen": [{"role": "narrator", "content": "x"}, assistant("A")]}, "chosen", "role 'narrator'"),
        ({"system": 3}, "system", "must be a string, got int"),
    ],
)
def test_argilla_row_errors_name_the_field(change, field, match):
    row = {**copy.deepcopy(ARGILLA_ROWS[0]), **change}
    with pytest.raises(RowError, match=match) as caught:
        strategy("chat_template.argilla")(row)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"`{field}` ")


def test_missing_column_names_the_option_that_renames_it():
    with pytest.raises(
        RowError, match=r"`chosen` is missing from the row .*`better`.* name the column with `field_chosen`"
    ):
        strategy("chat_template.argilla")({"better": [assistant("x")], "rejected": [assistant("y")]})


# --- chat_template -------------------------------------------------------------------------------


def test_chat_template_implicit_prompt_on_h4_ultrafeedback():
    """H4 rows: `chosen` / `rejected` are whole [user, assistant] conversations; `prompt` is a string copy
    of the user turn and `messages` a copy of `chosen`, both ignored."""
    rows = ultrafeedback_rows()
    before = copy.deepcopy(rows)
    to_pair = strategy("chat_template")
    for row in rows:
        pair = to_pair(row)
        assert pair["prompt"] == [user(row["prompt"])] == row["chosen"][:1]
        assert pair["chosen"] == row["chosen"][1:] and pair["rejected"] == row["rejected"][1:]
        assert set(pair) == {"prompt", "chosen", "rejected"}
    assert rows == before  # new dicts, rows untouched


def test_chat_template_explicit_prompt_keeps_multi_turn_history_and_system_column():
    row = {
        "system": "You are terse.",
        "prompt": [user("Pick a number."), assistant("7."), user("Another?")],
        "chosen": [assistant("3.")],
        "rejected": "I already did.",  # a string answer is one assistant message
    }
    pair = strategy("chat_template")(row)
    assert pair == {
        "prompt": [system("You are terse."), *row["prompt"]],
        "chosen": [assistant("3.")],
        "rejected": [assistant("I already did.")],
    }


def test_chat_template_answers_only_use_the_string_prompt_as_user_turn():
    row = {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": {"role": "assistant", "content": "Quito."}}
    assert strategy("chat_template")(row) == {
        "prompt": [user("Capital of Peru?")],
        "chosen": [assistant("Lima.")],
        "rejected": [assistant("Quito.")],
    }


def test_chat_template_field_messages_is_axolotls_name_for_the_prompt_column():
    row = {"conversation": [user("Hi")], "chosen": "Hello!", "rejected": "What?"}
    assert strategy("chat_template", field_messages="conversation")(row)["prompt"] == [user("Hi")]
    with pytest.raises(ValueError, match="`field_messages` and `field_prompt` .* set only one"):
        strategy("chat_template", field_messages="conversation", field_prompt="prompt")


@pytest.mark.parametrize(
    "row, field, match",
    [
        (  # implicit, the user turns differ: not a preference pair over one prompt
            {"chosen": [user("A?"), assistant("a")], "rejected": [user("B?"), assistant("b")]},
            "chosen",
            "different prompts: they differ from message 0 on, before a user turn",
        ),
        (  # implicit, an earlier assistant turn differs
            {
                "chosen": [user("Q"), assistant("x"), user("Q2"), assistant("y")],
                "rejected": [user("Q"), assistant("z"), user("Q2"), assistant("w")],
            },
            "chosen",
            "different prompts: they differ from message 1 on",
        ),
        (  # explicit prompt, but chosen repeats the user turn: it would be rendered twice
            {"prompt": [user("Q")], "chosen": [user("Q"), assistant("x")], "rejected": [assistant("y")]},
            "chosen",
            "message 0 is a user turn; an answer holds assistant turns only",
        ),
        ({"prompt": [], "chosen": "x", "rejected": "y"}, "prompt", "is empty"),
        ({"chosen": "x", "rejected": "y"}, "prompt", "is missing from the row"),
        ({"prompt": "Q", "chosen": "x", "rejected": 5}, "rejected", "must be a list of messages, got int"),
    ],
)
def test_chat_template_row_errors(row, field, match):
    with pytest.raises(RowError, match=match) as caught:
        strategy("chat_template")(row)
    assert caught.value.field == field


# --- chat_template.intel -------------------------------------------------------------------------


def test_intel_rows_become_messages_and_an_empty_system_is_dropped():
    to_pair = strategy("chat_template.intel")
    assert to_pair.layout == CONVERSATIONAL
    assert to_pair(INTEL_ROWS[0]) == {
        "prompt": [user(INTEL_ROWS[0]["question"])],
        "chosen": [assistant(INTEL_ROWS[0]["chosen"])],
        "rejected": [assistant(INTEL_ROWS[0]["rejected"])],
    }
    assert to_pair(INTEL_ROWS[1])["prompt"] == [system(INTEL_ROWS[1]["system"]), user("Is 91 a prime number?")]


def test_intel_renamed_prompt_column_and_errors():
    row = {"input": "2+2?", "chosen": "4", "rejected": "5"}
    assert strategy("chat_template.intel", field_prompt="input")(row)["prompt"] == [user("2+2?")]
    with pytest.raises(RowError, match=r"`question` is missing .* `field_prompt`"):
        strategy("chat_template.intel")(row)
    with pytest.raises(RowError, match="`rejected` is None"):
        strategy("chat_template.intel")({**INTEL_ROWS[1], "rejected": None})
    with pytest.raises(RowError, match="`question` is empty"):  # a question is not optional
        strategy("chat_template.intel")({**INTEL_ROWS[1], "question": " \n"})


# --- sharegpt ------------------------------------------------------------------------------------


def test_sharegpt_every_row_keeps_history_system_and_alternating_roles():
    rows = pairs_rows("sharegpt_en.json")
    before = copy.deepcopy(rows)
    to_pair = strategy("sharegpt")
    pairs = [to_pair(row) for row in rows]
    assert rows == before
    for row, pair in zip(rows, pairs, strict=True):
        turns = row["conversations"]
        assert pair["prompt"] == [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in turns]
        start = 1 if turns[0]["from"] == "system" else 0
        roles = [m["role"] for m in pair["prompt"][start:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        assert pair["chosen"] == [assistant(row["chosen"]["value"])]
        assert pair["rejected"] == [assistant(row["rejected"]["value"])]
    # (system turn?, user turns) of each output prompt, against the raw rows' speakers: every shape of
    # the file arrives, and the file has each shape (with and without a system turn, one and several turns).
    shapes = Counter((p["prompt"][0]["role"] == "system", [m["role"] for m in p["prompt"]].count("user")) for p in pairs)
    raw = Counter((r["conversations"][0]["from"] == "system", [t["from"] for t in r["conversations"]].count("human"))
                  for r in rows)
    assert shapes == raw
    assert {system for system, _ in raw} == {True, False} and {1, 2} <= {turns for _, turns in raw}


def test_sharegpt_system_column_tool_turns_and_answer_lists():
    row = {
        "system": "You can call tools.",
        "conversations": [
            {"from": "human", "value": "Weather in Oslo?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": '{"temp_c": 4}'},
        ],
        "chosen": [{"from": "gpt", "value": "It is 4 °C in Oslo."}],
        "rejected": {"from": "gpt", "value": "It is sunny everywhere."},
    }
    pair = strategy("sharegpt")(row)
    assert [m["role"] for m in pair["prompt"]] == ["system", "user", "assistant", "tool"]
    assert pair["prompt"][0]["content"] == "You can call tools."
    assert pair["chosen"] == [assistant("It is 4 °C in Oslo.")]
    assert pair["rejected"] == [assistant("It is sunny everywhere.")]


def test_sharegpt_openai_style_messages_through_mappings():
    row = {
        "messages": [{"role": "user", "content": "Hi"}],
        "chosen": {"role": "assistant", "content": "Hello"},
        "rejected": {"role": "assistant", "content": "Bye"},
    }
    to_pair = strategy(
        "sharegpt", field_messages="messages", message_property_mappings={"role": "role", "content": "content"}
    )
    assert to_pair(row)["prompt"] == [user("Hi")]


@pytest.mark.parametrize(
    "change, field, match",
    [
        (
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
            "conversations",
            "ends with an assistant turn",
        ),
        (
            {"conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]},
            "conversations",
            "message 0 is an assistant turn where a user turn belongs",
        ),
        (
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q"}]},
            "conversations",
            "message 1 is a user turn where an assistant turn belongs",
        ),
        ({"conversations": [{"from": "system", "value": "S"}]}, "conversations", "has no user turn"),
        (
            {"conversations": [{"from": "customer", "value": "Q"}]},
            "conversations",
            r"role 'customer'.*\{user: \[customer\]\}",
        ),
        ({"conversations": [{"role": "user", "content": "Q"}]}, "conversations", "message 0 has no `from`"),
        ({"chosen": {"from": "human", "value": "A"}}, "chosen", "must end with an assistant message"),
        (
            {"chosen": [{"from": "human", "value": "A"}, {"from": "gpt", "value": "B"}]},
            "chosen",
            "message 0 is a user turn",
        ),
        (
            {"system": "Other.", "conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}]},
            "system",
            "differ",
        ),
    ],
)
def test_sharegpt_row_errors(change, field, match):
    row = {
        "conversations": [{"from": "human", "value": "Q"}],
        "chosen": {"from": "gpt", "value": "A"},
        "rejected": {"from": "gpt", "value": "B"},
    }
    with pytest.raises(RowError, match=match) as caught:
        strategy("sharegpt")({**row, **change})
    assert caught.value.field == field


# --- hh_rlhf -------------------------------------------------------------------------------------


def test_hh_rlhf_transcripts_split_into_shared_prompt_and_final_answers():
    to_pair = strategy("hh_rlhf")
    pair = to_pair(HH_ROWS[0])
    assert pair == {
        "prompt": [user("What is a good way to keep cut flowers fresh?")],
        "chosen": [assistant("Trim the stems at an angle and change the water every two days.")],
        "rejected": [assistant("Put them in the freezer.")],
    }
    multi = to_pair(HH_ROWS[1])
    assert multi["prompt"] == [
        user("Can you help me plan a trip to Lisbon?"),
        assistant("Sure. How many days will you stay?"),
        user("Three days, in April."),
    ]
    assert multi["rejected"] == [assistant("Lisbon is the capital of Portugal.")]
    assert to_pair(HH_ROWS[2])["chosen"] == [
        assistant("Put the egg in boiling water.\n\nAfter nine minutes, cool it in cold water.")
    ]


@pytest.mark.parametrize(
    "chosen, match",
    [
        ("\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye", 'does not end with an "Assistant:" turn'),
        ("\n\nHuman: Hi there\n\nAssistant: Hello", "different conversations before their final Assistant turns"),
        ("Preface\n\nHuman: Hi\n\nAssistant: Hello", 'text before its first "Human:" turn'),
        ("Hi, Hello", 'has no "Human:" / "Assistant:" turns'),
        ("\n\nAssistant: Hello", 'no "Human:" turn before'),
    ],
)
def test_hh_rlhf_unparseable_transcripts_raise(chosen, match):
    with pytest.raises(RowError, match=match) as caught:
        strategy("hh_rlhf")({"chosen": chosen, "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."})
    assert caught.value.field == "chosen"


# --- empty answers and identical pairs: legal in every type --------------------------------------

EMPTY_ANSWER_CASES = {
    "chat_template.argilla": ({**ARGILLA_ROWS[0], "rejected": [user("Name a primary colour."), assistant("")]},
                              [assistant("")]),
    "chat_template": ({"chosen": [user("Hi"), assistant("Hello!")], "rejected": [user("Hi"), assistant("")]},
                      [assistant("")]),
    "chat_template.intel": ({**INTEL_ROWS[1], "rejected": ""}, [assistant("")]),
    "sharegpt": ({"conversations": [{"from": "human", "value": "Q"}], "chosen": {"from": "gpt", "value": "A"},
                  "rejected": {"from": "gpt", "value": ""}}, [assistant("")]),
    # Anthropic HH-RLHF ends some transcripts with "\n\nAssistant:" and nothing after it.
    "hh_rlhf": ({"chosen": HH_ROWS[0]["chosen"], "rejected": "\n\nHuman: What is a good way to keep cut flowers "
                 "fresh?\n\nAssistant:"}, [assistant("")]),
    "prompt_pairs": ({"prompt": "2+2=", "chosen": "4", "rejected": ""}, ""),
}


@pytest.mark.parametrize("type_name", sorted(EMPTY_ANSWER_CASES))
def test_an_empty_answer_is_an_empty_completion_in_every_type(type_name):
    row, empty = EMPTY_ANSWER_CASES[type_name]
    pair = strategy(type_name)(row)
    assert pair["rejected"] == empty and pair["chosen"] != empty and pair["prompt"]


def test_identical_conversations_split_before_their_final_message():
    row = {"chosen": [user("Q"), assistant("x")], "rejected": [user("Q"), assistant("x")]}
    assert strategy("chat_template")(row) == {"prompt": [user("Q")], "chosen": [assistant("x")],
                                              "rejected": [assistant("x")]}
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: "}
    assert strategy("hh_rlhf")(hh) == {"prompt": [user("Hi")], "chosen": [assistant("")], "rejected": [assistant("")]}


# --- prompt_pairs --------------------------------------------------------------------------------


def test_prompt_pairs_on_stack_exchange_with_renamed_columns():
    rows = pairs_rows("stack_exchange.json")
    to_pair = strategy("prompt_pairs", field_prompt="question", field_chosen="response_j", field_rejected="response_k")
    assert to_pair.layout == TEXT
    for row in rows:
        assert to_pair(row) == {"prompt": row["question"], "chosen": row["response_j"], "rejected": row["response_k"]}
    with pytest.raises(RowError, match="`response_j` must be a string, got list"):
        to_pair({**rows[0], "response_j": ["a"]})
    with pytest.raises(RowError, match="`question` is empty"):
        to_pair({**rows[0], "question": ""})


# --- dataset-entry checks at build time ----------------------------------------------------------


@pytest.mark.parametrize(
    "type_name, options, match",
    [
        (
            "prompt_pairs",
            {"field_messages": "conversations"},
            "`field_messages` is not an option of dataset type `prompt_pairs`; "
            "it reads: field_chosen, field_prompt, field_rejected",
        ),
        ("hh_rlhf", {"field_system": "system"}, "`field_system` is not an option of dataset type `hh_rlhf`"),
        (
            "chat_template.intel",
            {"message_property_mappings": {"role": "from"}},
            "`message_property_mappings` is not an option of dataset type `chat_template.intel`",
        ),
        (
            "chat_template.argilla",
            {"field_question": "q"},
            "`field_question` is not an option of dataset type `chat_template.argilla`",
        ),
        (
            "sharegpt",
            {"message_property_mappings": ["from", "value"]},
            "`message_property_mappings` of dataset type `sharegpt` must map",
        ),
        (
            "sharegpt",
            {"message_property_mappings": {"role": 3}},
            "`message_property_mappings` of dataset type `sharegpt` must map",
        ),
        (
            "sharegpt",
            {"message_property_mappings": []},
            "`message_property_mappings` of dataset type `sharegpt` must map",
        ),
        ("sharegpt", {"roles": "human"}, "`roles` of dataset type `sharegpt` must map a role to names"),
        ("sharegpt", {"roles": {"narrator": ["n"]}}, "`roles` of dataset type `sharegpt` maps to 'narrator'"),
        ("sharegpt", {"roles": {"user": [1]}}, r"`roles.user` of dataset type `sharegpt` must be a list of names"),
        (
            "chat_template",
            {"field_chosen": 3},
            "`field_chosen` of dataset type `chat_template` must be a column name, got 3",
        ),
        (
            "chat_template",
            {"field_chosen": "answer", "field_rejected": "answer"},
            "`field_chosen` and `field_rejected` .* both name the column `answer`",
        ),
        (
            "chat_template",
            {"message_field_role": "from", "message_property_mappings": {"role": "speaker"}},
            "`message_field_role` .* conflicts with `message_property_mappings.role`",
        ),
    ],
)
def test_bad_dataset_entry_raises_naming_the_key_and_type(type_name, options, match):
    with pytest.raises(ValueError, match=match):
        strategy(type_name, **options)


def test_loader_keys_and_unset_options_are_not_strategy_errors():
    # Keys the dataset loader reads pass through, and None is "not set" (a dumped pydantic entry).
    to_pair = strategy("prompt_pairs", data_files=["a.json"], chat_template="chatml", field_system=None, roles=None)
    assert to_pair({"prompt": "p", "chosen": "c", "rejected": "r"}) == {"prompt": "p", "chosen": "c", "rejected": "r"}


def test_legacy_message_field_keys_still_work():
    row = {
        "conversations": [{"speaker": "human", "text": "Q"}],
        "chosen": {"speaker": "gpt", "text": "A"},
        "rejected": "B",
    }
    to_pair = strategy("sharegpt", message_field_role="speaker", message_field_content="text")
    assert to_pair(row)["prompt"] == [user("Q")]


def test_extra_mapped_message_keys_are_copied():
    row = {
        "prompt": [user("Q")],
        "chosen": [{"role": "assistant", "content": "A", "thoughts": "easy"}],
        "rejected": [{"role": "assistant", "content": "B"}],
    }
    mappings = {"role": "role", "content": "content", "reasoning_content": "thoughts"}
    pair = strategy("chat_template", message_property_mappings=mappings)(row)
    assert pair["chosen"] == [{"role": "assistant", "content": "A", "reasoning_content": "easy"}]
    assert pair["rejected"] == [assistant("B")]


def test_row_error_carries_field_and_message_and_pickles():
    error = RowError("chosen", "is empty")
    assert (error.field, error.message, str(error)) == ("chosen", "is empty", "`chosen` is empty")
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))  # `Dataset.map(num_proc=...)` ships errors between processes
    assert (clone.field, clone.message) == ("chosen", "is empty")


def test_strategies_run_under_dataset_map_and_hash_stably():
    """What the loader does with a strategy: `Dataset.map` over Arrow rows (None-filled missing keys,
    a string `prompt` column replaced by messages), pickled to `num_proc` workers, hashed for the cache."""
    from datasets.fingerprint import Hasher

    rows = ultrafeedback_rows()
    to_pair = strategy("chat_template")
    raw = datasets.Dataset.from_list(rows)
    mapped = raw.map(to_pair, remove_columns=raw.column_names)
    assert mapped.to_list() == [to_pair(row) for row in rows]
    clone = pickle.loads(pickle.dumps(to_pair))
    assert clone(rows[0]) == to_pair(rows[0])
    assert Hasher.hash(strategy("chat_template")) == Hasher.hash(to_pair)
    assert Hasher.hash(strategy("chat_template", field_chosen="better")) != Hasher.hash(to_pair)


# --- end to end through the tokeniser -----------------------------------------------------------


def _sharegpt_sample():
    rows = pairs_rows("sharegpt_en.json")
    # the first single-turn, system-turn and multi-turn rows: each shape, few rows to keep this fast
    return [
        next(r for r in rows if len(r["conversations"]) == 1),
        next(r for r in rows if r["conversations"][0]["from"] == "system"),
        next(r for r in rows if len(r["conversations"]) >= 5),
    ]


E2E_CASES = {
    "chat_template.argilla": lambda: ({}, ARGILLA_ROWS),
    "chat_template": lambda: ({}, ultrafeedback_rows()[:6]),
    "chat_template.intel": lambda: ({}, INTEL_ROWS),
    "sharegpt": lambda: ({}, _sharegpt_sample()),
    "hh_rlhf": lambda: ({}, HH_ROWS),
    "prompt_pairs": lambda: (
        {"field_prompt": "question", "field_chosen": "response_j", "field_rejected": "response_k"},
        pairs_rows("stack_exchange.json")[:6],
    ),
}


@pytest.mark.parametrize("type_name", sorted(E2E_CASES))
def test_strategy_output_tokenises_with_smollm2(type_name):
    options, rows = E2E_CASES[type_name]()
    to_pair = strategy(type_name, **options)
    pairs = [to_pair(row) for row in rows]
    tokenised, stats = prepare_preference_dataset(
        datasets.Dataset.from_list(pairs), smollm2_tokenizer(), max_length=2048, source=type_name
    )
    expected_layout = "standard" if to_pair.layout == TEXT else "conversational"
    assert (stats.layout, stats.pairs, len(tokenised)) == (expected_layout, len(rows), len(rows))
    assert all(row["chosen_input_ids"] and row["rejected_input_ids"] for row in tokenised)


def test_sharegpt_multi_turn_row_decodes_to_full_history_system_and_answer():
    # the shortest multi-turn row, so the default `max_prompt_length` (512) leaves its prompt whole
    multi_turn = [r for r in pairs_rows("sharegpt_en.json") if len(r["conversations"]) >= 5]
    row = copy.deepcopy(min(multi_turn, key=lambda r: sum(len(t["value"]) for t in r["conversations"])))
    row["system"] = "You are a careful literary critic."  # LLaMA-Factory's optional system column
    tokenizer = smollm2_tokenizer()
    pair = strategy("sharegpt")(row)
    (ids,), _ = prepare_preference_dataset(datasets.Dataset.from_list([pair]), tokenizer, max_length=2048)
    prompt = tokenizer.decode(ids["prompt_input_ids"])
    assert "You are a careful literary critic." in prompt
    position = 0
    for turn in row["conversations"]:  # every earlier turn, in order
        position = prompt.index(turn["value"], position) + len(turn["value"])
    assert prompt.endswith("<|im_start|>assistant\n")
    chosen = tokenizer.decode(ids["chosen_input_ids"])
    # ChatML closes a turn with "<|im_end|>\n"; the tokeniser keeps the template's newline after EOS.
    assert chosen.removesuffix("\n") == row["chosen"]["value"] + "<|im_end|>"
