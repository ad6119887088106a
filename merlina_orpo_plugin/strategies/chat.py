"""Dataset types whose rows hold message lists; each returns the conversational layout.

Default columns, each renamed by the ``field_*`` option beside it:

| type                    | field_prompt | field_messages  | field_chosen | field_rejected | field_system |
| ----------------------- | ------------ | --------------- | ------------ | -------------- | ------------ |
| `chat_template.argilla` | `prompt`     | -               | `chosen`     | `rejected`     | `system`     |
| `chat_template`         | `prompt`     | = field_prompt  | `chosen`     | `rejected`     | `system`     |
| `sharegpt`              | -            | `conversations` | `chosen`     | `rejected`     | `system`     |

All three read ``message_property_mappings`` ({role: key, content: key}, merged over the default
message keys: role/content, for sharegpt from/value; any other key is copied into the message when
present), Axolotl's legacy ``message_field_role`` / ``message_field_content``, and ``roles``
({role: [names]}, merged over ``common.DEFAULT_ROLE_ALIASES``: human->user,
gpt/bot/model/function_call->assistant, observation/function->tool).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.formats import common_prefix_length
from .common import (
    MessageFormat,
    a_turn,
    answer_messages,
    check_completion,
    get_value,
    optional_text,
    read_fields,
    require_text,
    with_system,
)
from ..data.layouts import Layout
from .hookspecs import RowError, hookimpl

_PROMPT_SIDE = ("user", "tool")  # turns a model answers


class _MessageType:
    """Shared construction: the type's column options and its message format, checked once."""

    name: str
    defaults: Mapping[str, str]
    message_keys = ("role", "content")
    layout = Layout.CONVERSATIONAL

    def __init__(self, ds_cfg: Mapping[str, Any]):
        self.fields = read_fields(ds_cfg, self.name, self.defaults, messages=True)
        self.format = MessageFormat.from_config(ds_cfg, self.name, *self.message_keys)

    def _answer(self, row: Mapping[str, Any], option: str) -> list[dict]:
        return answer_messages(self.format, row, self.fields[option], option)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fields})"


class ArgillaStrategy(_MessageType):
    """``chat_template.argilla``, the dataset type of Axolotl's built-in ``rl: orpo``.

    Row: ``chosen`` / ``rejected`` conversations whose LAST message is the assistant answer; the
    messages before it in ``chosen`` are the prompt history (``rejected`` may repeat them or hold
    the answer alone). Optional ``system`` string: the system message. Optional ``prompt`` string:
    the first user turn. Axolotl builds EVERY user turn from ``prompt`` when the column exists;
    that is the same on single-turn rows, but argilla's multi-turn rows keep the first user input
    there, so we take only the first user turn from it and the later ones from the history. When
    ``chosen`` holds just the answer, ``prompt`` is the only user turn. Unlike Axolotl, nothing is
    cut by string length: the answers stay messages.
    """

    name = "chat_template.argilla"
    defaults = {
        "field_prompt": "prompt",
        "field_chosen": "chosen",
        "field_rejected": "rejected",
        "field_system": "system",
    }

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        chosen_col, system_col = self.fields["field_chosen"], self.fields["field_system"]
        chosen, rejected = self._answer(row, "field_chosen"), self._answer(row, "field_rejected")
        history = chosen[:-1]
        if rejected[:-1] and rejected[:-1] != history:
            raise RowError(
                self.fields["field_rejected"], f"holds a different conversation before its answer than `{chosen_col}`"
            )
        prompt_text = optional_text(row, self.fields["field_prompt"])
        if prompt_text is not None:
            history = _with_first_user_turn(history, prompt_text)
        if not history or history[-1]["role"] not in _PROMPT_SIDE:
            got = a_turn(history[-1]["role"]) if history else "nothing"
            raise RowError(chosen_col, f"must hold a user turn before its answer (or the row a `prompt`), found {got}")
        prompt = with_system(optional_text(row, system_col), history, system_col)
        return {"prompt": prompt, "chosen": chosen[-1:], "rejected": rejected[-1:]}


def _with_first_user_turn(history: list[dict], text: str) -> list[dict]:
    for i, message in enumerate(history):
        if message["role"] == "user":
            return [*history[:i], {**message, "content": text}, *history[i + 1 :]]
    return [*history, {"role": "user", "content": text}]


class ChatTemplateStrategy(_MessageType):
    """``chat_template``: TRL's conversational preference layout, explicit or implicit prompt.

    - explicit: ``prompt`` messages, ``chosen`` / ``rejected`` the answer messages (a string or
      one dict is one assistant answer);
    - implicit: ``chosen`` / ``rejected`` whole conversations (HuggingFaceH4/ultrafeedback_binarized).
      The prompt is their longest common prefix of messages; they may differ only in the final
      model turns. A string ``prompt`` (H4 copies the first user turn there) is ignored, as TRL does;
    - answers only: ``prompt`` a string, the user turn.

    Optional ``system`` string: the system message. ``field_messages`` is accepted as Axolotl's
    DPO spelling of ``field_prompt``.
    """

    name = "chat_template"
    defaults = {
        "field_prompt": "prompt",
        "field_chosen": "chosen",
        "field_rejected": "rejected",
        "field_system": "system",
    }

    def __init__(self, ds_cfg: Mapping[str, Any]):
        if ds_cfg.get("field_messages") is not None:
            if ds_cfg.get("field_prompt") is not None:
                raise ValueError(
                    f"`field_messages` and `field_prompt` of dataset type `{self.name}` name the same "
                    "thing (the prompt column): set only one"
                )
            ds_cfg = {**ds_cfg, "field_prompt": ds_cfg["field_messages"], "field_messages": None}
        super().__init__(ds_cfg)

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        fields = self.fields
        chosen, rejected = self._answer(row, "field_chosen"), self._answer(row, "field_rejected")
        system = optional_text(row, fields["field_system"])
        prompt_value = row.get(fields["field_prompt"])
        if prompt_value is not None and not isinstance(prompt_value, str):
            prompt = self.format.convert(prompt_value, fields["field_prompt"])
            if not prompt:
                raise RowError(fields["field_prompt"], "is empty")
            check_completion(chosen, fields["field_chosen"])
            check_completion(rejected, fields["field_rejected"])
        elif any(m["role"] in ("user", "system") for m in chosen + rejected):
            prompt, chosen, rejected = split_shared_prompt(
                chosen, rejected, fields["field_chosen"], fields["field_rejected"]
            )
        else:
            prompt = [{"role": "user", "content": require_text(row, fields["field_prompt"], "field_prompt")}]
        return {"prompt": with_system(system, prompt, fields["field_system"]), "chosen": chosen, "rejected": rejected}


def split_shared_prompt(
    chosen: list[dict], rejected: list[dict], chosen_col: str, rejected_col: str
) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen answer, rejected answer) of two whole conversations: the prompt is their
    longest common prefix, and everything after it must be model turns (assistant or tool).

    The same conversation twice splits before its final message (TRL's ``extract_prompt`` does the
    same): a legal pair with identical answers, which the statistics count and warn about."""
    if chosen == rejected:
        return chosen[:-1], chosen[-1:], rejected[-1:]
    n = common_prefix_length(chosen, rejected)
    if n in (len(chosen), len(rejected)):
        shorter = chosen_col if n == len(chosen) else rejected_col
        raise RowError(shorter, "is the start of the other conversation, so it has no answer of its own")
    for rest in (chosen[n:], rejected[n:]):
        turn = next((m for m in rest if m["role"] in ("user", "system")), None)
        if turn is not None:
            raise RowError(
                chosen_col,
                f"and `{rejected_col}` have different prompts: they differ from message {n} on, before "
                f"{a_turn(turn['role'])}, where only the final model turns may differ",
            )
    return chosen[:n], chosen[n:], rejected[n:]


class ShareGPTStrategy(_MessageType):
    """``sharegpt``: LLaMA-Factory's preference layout.

    Row: ``conversations`` list of ``{from, value}`` turns (from: system, human, gpt, observation,
    function_call) ending with a human (or observation) turn; ``chosen`` / ``rejected`` one
    ``{from: gpt, value}`` message each, or a list ending with one. A leading system turn, or a
    ``system`` column, is the system message. As LLaMA-Factory checks, turns after the system one
    alternate human-side / gpt-side starting with human.
    """

    name = "sharegpt"
    defaults = {
        "field_messages": "conversations",
        "field_chosen": "chosen",
        "field_rejected": "rejected",
        "field_system": "system",
    }
    message_keys = ("from", "value")

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        column, system_col = self.fields["field_messages"], self.fields["field_system"]
        history = self.format.convert(get_value(row, column, "field_messages"), column)
        _check_turns(history, column)
        chosen, rejected = self._answer(row, "field_chosen"), self._answer(row, "field_rejected")
        check_completion(chosen, self.fields["field_chosen"])
        check_completion(rejected, self.fields["field_rejected"])
        prompt = with_system(optional_text(row, system_col), history, system_col)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _check_turns(history: list[dict], column: str) -> None:
    start = 1 if history and history[0]["role"] == "system" else 0
    if len(history) == start:
        raise RowError(column, "has no user turn")
    for i in range(start, len(history)):
        expected = _PROMPT_SIDE if (i - start) % 2 == 0 else ("assistant",)
        role = history[i]["role"]
        if role not in expected:
            raise RowError(
                column,
                f"message {i} is {a_turn(role)} where {a_turn(expected[0])} belongs: after an optional system "
                "message, turns alternate user and assistant, starting and ending with a user turn",
            )
    if history[-1]["role"] not in _PROMPT_SIDE:
        raise RowError(column, "ends with an assistant turn; the turns before the answers must end with a user turn")


@hookimpl
def merlina_orpo_dataset_types():
    return {cls.name: cls for cls in (ArgillaStrategy, ChatTemplateStrategy, ShareGPTStrategy)}
