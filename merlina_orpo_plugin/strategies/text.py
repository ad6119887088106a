"""Dataset types whose rows hold plain strings.

Default columns, each renamed by the ``field_*`` option beside it (none reads message options):

| type                  | layout         | field_prompt | field_chosen | field_rejected | field_system |
| --------------------- | -------------- | ------------ | ------------ | -------------- | ------------ |
| `chat_template.intel` | conversational | `question`   | `chosen`     | `rejected`     | `system`     |
| `hh_rlhf`             | conversational | -            | `chosen`     | `rejected`     | -            |
| `prompt_pairs`        | text           | `prompt`     | `chosen`     | `rejected`     | -            |
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .common import answer_text, optional_text, read_fields, require_text, with_system
from ..data.layouts import Layout
from .hookspecs import RowError, hookimpl


class _StringType:
    name: str
    defaults: Mapping[str, str]
    layout: str

    def __init__(self, ds_cfg: Mapping[str, Any]):
        self.fields = read_fields(ds_cfg, self.name, self.defaults)

    def _text(self, row: Mapping[str, Any], option: str) -> str:
        return require_text(row, self.fields[option], option)

    def _answer(self, row: Mapping[str, Any], option: str) -> str:
        return answer_text(row, self.fields[option], option)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fields})"


class IntelStrategy(_StringType):
    """``chat_template.intel``: Intel/orca_dpo_pairs rows, strings ``system`` (optional, often
    empty), ``question``, ``chosen``, ``rejected`` -> [system, user] prompt and assistant answers."""

    name = "chat_template.intel"
    defaults = {
        "field_prompt": "question",
        "field_chosen": "chosen",
        "field_rejected": "rejected",
        "field_system": "system",
    }
    layout = Layout.CONVERSATIONAL

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        system_col = self.fields["field_system"]
        prompt = [{"role": "user", "content": self._text(row, "field_prompt")}]
        return {
            "prompt": with_system(optional_text(row, system_col), prompt, system_col),
            "chosen": [{"role": "assistant", "content": self._answer(row, "field_chosen")}],
            "rejected": [{"role": "assistant", "content": self._answer(row, "field_rejected")}],
        }


# A turn marker: "\n\nHuman:" / "\n\nAssistant:", or one at the very start (a few HH rows lack the
# leading blank line). Markers inside a turn's own text are indistinguishable, as in every HH parser.
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str, column: str) -> list[dict]:
    """Anthropic HH-RLHF transcript -> messages; each turn's text stripped of surrounding whitespace."""
    parts = _HH_TURN.split(text)  # [before the first marker, speaker, text, speaker, text, ...]
    if len(parts) == 1:
        raise RowError(column, 'has no "Human:" / "Assistant:" turns')
    if parts[0].strip():
        raise RowError(column, f'has text before its first "Human:" turn: {parts[0].strip()[:60]!r}')
    return [
        {"role": _HH_ROLES[speaker], "content": turn.strip()}
        for speaker, turn in zip(parts[1::2], parts[2::2], strict=True)
    ]


class HHRLHFStrategy(_StringType):
    """``hh_rlhf``: Anthropic/hh-rlhf rows, ``chosen`` / ``rejected`` whole transcripts
    ("\\n\\nHuman: ...\\n\\nAssistant: ...") that differ only in the final Assistant turn.

    Both parse into user/assistant messages; the turns before the final Assistant turn are the
    prompt and must be the same in both, the final Assistant turn of each is its answer. An empty
    final turn ("...\\n\\nAssistant:" with nothing after, as some HH rows end) is an empty answer.
    """

    name = "hh_rlhf"
    defaults = {"field_chosen": "chosen", "field_rejected": "rejected"}
    layout = Layout.CONVERSATIONAL

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        chosen_col, rejected_col = self.fields["field_chosen"], self.fields["field_rejected"]
        chosen = self._parse(row, "field_chosen")
        rejected = self._parse(row, "field_rejected")
        if chosen[:-1] != rejected[:-1]:
            raise RowError(
                chosen_col, f"and `{rejected_col}` have different conversations before their final Assistant turns"
            )
        return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}

    def _parse(self, row: Mapping[str, Any], option: str) -> list[dict]:
        column = self.fields[option]
        messages = parse_hh_transcript(self._text(row, option), column)
        if messages[-1]["role"] != "assistant":
            raise RowError(column, 'does not end with an "Assistant:" turn')
        if not any(m["role"] == "user" for m in messages[:-1]):
            raise RowError(column, 'has no "Human:" turn before its final "Assistant:" turn')
        return messages


class PromptPairsStrategy(_StringType):
    """``prompt_pairs``: ``prompt``, ``chosen``, ``rejected`` strings, kept as they are (text
    layout, no chat template): the tokeniser joins prompt + answer directly, so a prompt should
    end with its own separator ("...\\n\\nAnswer: ")."""

    name = "prompt_pairs"
    defaults = {"field_prompt": "prompt", "field_chosen": "chosen", "field_rejected": "rejected"}
    layout = Layout.STANDARD

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "prompt": self._text(row, "field_prompt"),
            "chosen": self._answer(row, "field_chosen"),
            "rejected": self._answer(row, "field_rejected"),
        }


@hookimpl
def merlina_orpo_dataset_types():
    return {cls.name: cls for cls in (IntelStrategy, HHRLHFStrategy, PromptPairsStrategy)}
