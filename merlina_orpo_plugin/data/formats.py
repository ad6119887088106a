"""Rows of each layout -> text: the prompt text and the two FULL texts (prompt + chosen, prompt + rejected).

Standard rows are joined as they are; implicit rows are split at their shared prefix
(``split_text_prompt`` / ``split_message_prompt``); conversations are rendered with the tokenizer's
chat template, the prompt with its generation prompt. The split into prompt and completion happens
later, on token ids (see ``tokenize.py``); a template that re-renders earlier turns once the answer is
there (Mistral Nemo's system text) keeps the prompt as rendered for generation (``answers_after_prompt``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .layouts import Layout


def common_prefix_length(*sequences: Sequence) -> int:
    """Length of the longest prefix shared by all ``sequences`` (token ids, strings or message lists)."""
    first, rest = sequences[0], sequences[1:]
    n = min(len(s) for s in sequences)
    if all(s[:n] == first[:n] for s in rest):  # the usual case, compared at C speed
        return n
    for i in range(n):
        token = first[i]
        if any(s[i] != token for s in rest):
            return i
    return n


def split_text_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two strings into (shared prompt, chosen rest, rejected rest).

    The prompt is the longest common prefix, backed off to the start of a word when the first
    difference falls inside one ("blue" vs "bright" must not leave "b" in the prompt), and when
    one string is a prefix of the other or both are the same (so that each completion keeps at
    least its last word). As in TRL's ``extract_prompt``, a single space before the split goes to
    the completions (" blue.").
    """
    n = common_prefix_length(chosen, rejected)

    def inside_word(i: int) -> bool:
        after = chosen[i : i + 1].isalnum() or rejected[i : i + 1].isalnum()
        return i > 0 and chosen[i - 1].isalnum() and after

    if inside_word(n) or n in (len(chosen), len(rejected)):
        while n > 0 and not chosen[n - 1].isspace():
            n -= 1
    if n > 0 and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def clean_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages without the None-valued keys Arrow adds when some rows' messages carry extra keys.

    A template that tests ``message.tool_calls is defined`` would otherwise see ``tool_calls=None``.
    """
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def split_message_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Split two conversations into (shared leading messages, chosen rest, rejected rest).

    When one conversation is a prefix of the other, or both are the same, the last shared message
    moves to the completions so neither is empty (TRL's ``extract_prompt`` does the same through its
    loop end).
    """
    n = common_prefix_length(chosen, rejected)
    n = min(n, len(chosen) - 1, len(rejected) - 1)
    return chosen[:n], chosen[n:], rejected[n:]


def _row_tools(tools: Any) -> list | None:
    """Tool schemas for the chat template: a list, or a JSON string of one; empty means none."""
    if isinstance(tools, str):
        tools = json.loads(tools) if tools.strip() else None
    return list(tools) if tools else None  # TRL: Llama renders tool boilerplate for tools=[]


def render_conversation(tokenizer, prompt: list[dict], chosen: list[dict], rejected: list[dict], tools=None):
    """(prompt text, prompt+chosen text, prompt+rejected text) through the chat template.

    The prompt gets the generation prompt (``<|im_start|>assistant\\n`` in ChatML); a prompt ending
    in an assistant turn is a prefill and is continued instead, as in TRL's ``apply_chat_template``.
    The full texts keep the earlier turns as the prompt renders them (``answers_after_prompt``).
    """

    def render(messages, **kwargs) -> str:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)

    full_chosen, full_rejected = render(prompt + chosen), render(prompt + rejected)
    if not prompt:  # an implicit prompt may be empty; templates may index messages[0]
        return "", full_chosen, full_rejected
    if prompt[-1].get("role") == "assistant":  # a prefill: its answer continues that turn
        return render(prompt, continue_final_message=True), full_chosen, full_rejected
    prompt_text = render(prompt, add_generation_prompt=True)
    row = (prompt, chosen, rejected, tools)
    return (prompt_text, *answers_after_prompt(tokenizer, row, prompt_text, full_chosen, full_rejected))


def render_batch(batch: Mapping[str, list], layout: Layout, tokenizer) -> tuple[list[str], list[str], list[str]]:
    """Per row of a ``dataset.map`` batch: prompt texts, prompt+chosen texts, prompt+rejected texts."""
    if layout is Layout.STANDARD:
        prompts = batch["prompt"]
        return (
            prompts,
            [p + c for p, c in zip(prompts, batch["chosen"], strict=True)],
            [p + r for p, r in zip(prompts, batch["rejected"], strict=True)],
        )
    if layout is Layout.IMPLICIT_TEXT:
        # prompt + rest is the original string: only the prompt text is new.
        prompts = [split_text_prompt(c, r)[0] for c, r in zip(batch["chosen"], batch["rejected"], strict=True)]
        return prompts, list(batch["chosen"]), list(batch["rejected"])
    if not layout.uses_messages:
        raise ValueError(f"layout {layout.value!r} has no text to render")
    tools = batch.get("tools") or [None] * len(batch["chosen"])
    rows = []
    for i, (chosen, rejected) in enumerate(zip(batch["chosen"], batch["rejected"], strict=True)):
        chosen, rejected = clean_messages(chosen), clean_messages(rejected)
        if layout is Layout.CONVERSATIONAL:
            prompt = clean_messages(batch["prompt"][i])
        else:
            prompt, chosen, rejected = split_message_prompt(chosen, rejected)
        rows.append((prompt, chosen, rejected, _row_tools(tools[i])))
    return render_conversations(tokenizer, rows)


def render_conversations(tokenizer, rows: list[tuple]) -> tuple[list[str], list[str], list[str]]:
    """``render_conversation`` of many ``(prompt, chosen, rejected, tools)`` rows, same texts.

    Rows without tools go through one ``apply_chat_template`` call per kind of text (prompts to
    continue, prompts to answer, full conversations): each call re-reads the template and the
    special tokens, about a fifth of the rendering time when done per text. Rows with tools keep their own.
    """
    texts = [["", "", ""] for _ in rows]
    continued, answered, plain = [], [], []
    for i, (prompt, _, _, tools) in enumerate(rows):
        if tools is not None:
            texts[i] = list(render_conversation(tokenizer, *rows[i]))
        else:
            plain.append(i)
            if prompt:  # an empty implicit prompt renders as ""
                (continued if prompt[-1].get("role") == "assistant" else answered).append(i)

    def render(indices: list[int], messages, column: int, **kwargs) -> None:
        if indices:
            rendered = tokenizer.apply_chat_template([messages(rows[i]) for i in indices], tokenize=False, **kwargs)
            for i, text in zip(indices, rendered, strict=True):
                texts[i][column] = text

    render(answered, lambda row: row[0], 0, add_generation_prompt=True)
    render(continued, lambda row: row[0], 0, continue_final_message=True)
    render(plain, lambda row: row[0] + row[1], 1)
    render(plain, lambda row: row[0] + row[2], 2)
    for i in answered:
        texts[i][1:] = answers_after_prompt(tokenizer, rows[i], *texts[i])
    return [t[0] for t in texts], [t[1] for t in texts], [t[2] for t in texts]


def answers_after_prompt(tokenizer, row: tuple, prompt_text: str, full_chosen: str, full_rejected: str):
    """(prompt+chosen text, prompt+rejected text) that keep the earlier turns as the prompt renders them.

    Usually the full renders start with the prompt render and are returned as they are. A template may
    render an EARLIER turn differently once the conversation ends with an answer: Mistral Nemo writes
    the system text into the last user turn only while that turn is the last message, so an answered
    conversation has no system text, and the token-prefix split would put the last question into both
    completions. So when the full renders do not start with the earlier turns as the prompt renders
    them (``prompt`` without a generation prompt), the full texts become the prompt text + each answer
    turn as the full render ends it, from where the answers start (where the two answers and an empty
    answer part). A generation prompt the full render lacks (an opened ``<think>``) is not such a case:
    the full render stands, and the token-prefix split handles it.
    """
    if full_chosen.startswith(prompt_text) and full_rejected.startswith(prompt_text):
        return full_chosen, full_rejected
    prompt, _, _, tools = row
    earlier = tokenizer.apply_chat_template(prompt, tools=tools, tokenize=False)
    if full_chosen.startswith(earlier) and full_rejected.startswith(earlier):
        return full_chosen, full_rejected
    empty = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": ""}], tools=tools, tokenize=False)
    start = common_prefix_length(full_chosen, full_rejected, empty)
    return prompt_text + full_chosen[start:], prompt_text + full_rejected[start:]
