"""Building blocks of the built-in dataset types, also usable by plugin authors.

- ``read_fields``: a type's ``field_*`` options with its defaults, unknown options refused at build time.
- ``get_value`` / ``require_text`` / ``answer_text`` / ``optional_text``: one column of a row, or ``RowError``.
- ``MessageFormat``: a dataset's message spelling (``message_property_mappings``, ``roles``) to
  ``{"role", "content"}`` messages with canonical roles (``DEFAULT_ROLE_ALIASES``); merged over the
  type's defaults, as Axolotl's ``chat_template`` types read the same keys.
- ``with_system``, ``answer_messages``, ``check_completion``: the shared shape rules of a pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .hookspecs import RowError

ROLES = ("system", "user", "assistant", "tool")
# Speaker names seen in public preference data -> chat-template roles. `function_call` (a model's
# tool call in LLaMA-Factory) is an assistant turn; `observation` / `function` carry tool results.
DEFAULT_ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
}
MESSAGE_OPTIONS = ("message_property_mappings", "message_field_role", "message_field_content", "roles")


def a_turn(role: str) -> str:
    """'a user turn', 'an assistant turn': for error messages."""
    return f"{'an' if role[:1] in 'aeio' else 'a'} {role} turn"


def read_fields(
    ds_cfg: Mapping[str, Any], type_name: str, defaults: Mapping[str, str], *, messages: bool = False
) -> dict[str, str]:
    """Column names by option (``{"field_chosen": "better", ...}``), the type's defaults filled in.

    ValueError for a ``field_*`` or message option this type does not read (a typo, or a key meant
    for another type would otherwise be ignored silently) and for a name that is not a string.
    """
    allowed = set(defaults) | (set(MESSAGE_OPTIONS) if messages else set())
    for key, value in ds_cfg.items():
        if value is not None and (key.startswith("field_") or key in MESSAGE_OPTIONS) and key not in allowed:
            raise ValueError(
                f"`{key}` is not an option of dataset type `{type_name}`; it reads: {', '.join(sorted(allowed))}"
            )
    fields = {}
    for key, default in defaults.items():
        value = ds_cfg.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"`{key}` of dataset type `{type_name}` must be a column name, got {value!r}")
        fields[key] = default if value is None else value
    for key, column in fields.items():
        other = next((k for k, c in fields.items() if c == column and k < key), None)
        if other:
            raise ValueError(f"`{other}` and `{key}` of dataset type `{type_name}` both name the column `{column}`")
    return fields


def get_value(row: Mapping[str, Any], column: str, option: str) -> Any:
    """The row's non-None value in ``column``; RowError naming the option that renames it when absent."""
    if column not in row:
        columns = ", ".join(f"`{c}`" for c in row) or "none"
        raise RowError(column, f"is missing from the row (its columns: {columns}); name the column with `{option}`")
    if row[column] is None:
        raise RowError(column, "is None")
    return row[column]


def answer_text(row: Mapping[str, Any], column: str, option: str) -> str:
    """A string column that may be empty: an answer ("" is an empty completion, trained as the end token)."""
    value = get_value(row, column, option)
    if not isinstance(value, str):
        raise RowError(column, f"must be a string, got {type(value).__name__}")
    return value


def require_text(row: Mapping[str, Any], column: str, option: str) -> str:
    """A string column that must hold text: a question or a transcript (blank means the field is missing)."""
    value = answer_text(row, column, option)
    if not value.strip():
        raise RowError(column, "is empty")
    return value


def optional_text(row: Mapping[str, Any], column: str) -> str | None:
    """An optional string column: absent, None and blank all mean "not given" (Intel rows have `system: ""`)."""
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise RowError(column, f"must be a string, got {type(value).__name__}")
    return value


def with_system(system: str | None, messages: list[dict], column: str) -> list[dict]:
    """``messages`` led by the system message ``system`` from its own column, unless they carry the same one."""
    if system is None:
        return messages
    if messages and messages[0]["role"] == "system":
        if messages[0]["content"] == system:
            return messages
        raise RowError(column, "and the conversation's own system message differ; keep only one of them")
    return [{"role": "system", "content": system}, *messages]


def _role_aliases(ds_cfg: Mapping[str, Any], type_name: str) -> dict[str, str]:
    aliases = dict(DEFAULT_ROLE_ALIASES)
    roles = ds_cfg.get("roles")
    if roles is None:
        return aliases
    if not isinstance(roles, Mapping):
        raise ValueError(f"`roles` of dataset type `{type_name}` must map a role to names, e.g. {{assistant: [bot]}}")
    for target, names in roles.items():
        if target not in ROLES:
            raise ValueError(f"`roles` of dataset type `{type_name}` maps to {target!r}; roles are {', '.join(ROLES)}")
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, Sequence) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"`roles.{target}` of dataset type `{type_name}` must be a list of names, got {names!r}")
        aliases.update(dict.fromkeys(names, target))
    return aliases


def _property_mappings(ds_cfg: Mapping[str, Any], type_name: str, defaults: Mapping[str, str]) -> dict[str, str]:
    mapping = ds_cfg.get("message_property_mappings")
    mapping = {} if mapping is None else mapping
    if not isinstance(mapping, Mapping) or not all(isinstance(v, str) and v for v in mapping.values()):
        raise ValueError(
            f"`message_property_mappings` of dataset type `{type_name}` must map message keys to the row's "
            f"message keys, e.g. {{role: from, content: value}}, got {mapping!r}"
        )
    merged = {**defaults, **mapping}
    # Axolotl's deprecated spellings; it rejects a conflict with the new mapping, and so do we.
    for legacy, key in (("message_field_role", "role"), ("message_field_content", "content")):
        value = ds_cfg.get(legacy)
        if value is None:
            continue
        if key in mapping and mapping[key] != value:
            raise ValueError(
                f"`{legacy}` ({value!r}) conflicts with `message_property_mappings.{key}` ({mapping[key]!r})"
            )
        merged[key] = value
    return merged


@dataclass(frozen=True)
class MessageFormat:
    """How a dataset spells a message: which keys hold role, content and extras, and its role names."""

    properties: tuple[tuple[str, str], ...]  # (message key, row message key); role and content first
    roles: Mapping[str, str]  # row role name -> one of ROLES

    @classmethod
    def from_config(cls, ds_cfg: Mapping[str, Any], type_name: str, role: str = "role", content: str = "content"):
        mapping = _property_mappings(ds_cfg, type_name, {"role": role, "content": content})
        ordered = {"role": mapping.pop("role"), "content": mapping.pop("content"), **mapping}
        return cls(tuple(ordered.items()), _role_aliases(ds_cfg, type_name))

    def convert(self, messages: Any, column: str) -> list[dict]:
        if isinstance(messages, Mapping):  # one message where a list was expected (LLaMA-Factory's answers)
            messages = [messages]
        if isinstance(messages, str) or not isinstance(messages, Sequence):
            raise RowError(column, f"must be a list of messages, got {type(messages).__name__}")
        return [self._message(m, column, i) for i, m in enumerate(messages)]

    def _message(self, raw: Any, column: str, index: int) -> dict:
        if not isinstance(raw, Mapping):
            raise RowError(column, f"message {index} must be a dict, got {type(raw).__name__}")
        message = {}
        for key, source in self.properties:
            value = raw.get(source)
            if key in ("role", "content") and not isinstance(value, str):
                problem = f"has no `{source}`" if value is None else f"`{source}` must be a string"
                raise RowError(column, f"message {index} {problem}")
            if value is not None:
                message[key] = value
        role = self.roles.get(message["role"])
        if role is None:
            raise RowError(
                column,
                f"message {index} has role {message['role']!r}, which is none of {', '.join(sorted(self.roles))}; "
                f"name its role with `roles`, e.g. {{user: [{message['role']}]}}",
            )
        message["role"] = role
        return message


def answer_messages(fmt: MessageFormat, row: Mapping[str, Any], column: str, option: str) -> list[dict]:
    """``chosen`` / ``rejected`` as messages ending in an assistant answer (whose content may be empty).

    A string is one assistant answer and a dict one message (LLaMA-Factory stores answers so).
    """
    value = get_value(row, column, option)
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    messages = fmt.convert(value, column)
    if not messages:
        raise RowError(column, "is empty")
    if messages[-1]["role"] != "assistant":
        raise RowError(column, f"must end with an assistant message, ends with {a_turn(messages[-1]['role'])}")
    return messages


def check_completion(messages: list[dict], column: str) -> None:
    """A completion holds model-side turns only: an answer after a user turn belongs in the prompt."""
    for i, message in enumerate(messages):
        if message["role"] not in ("assistant", "tool"):
            raise RowError(column, f"message {i} is {a_turn(message['role'])}; an answer holds assistant turns only")
