"""Batched tokenisation of preference pairs: token-prefix prompt split, BOS/EOS, truncation.

Each row becomes ``prompt_input_ids`` and the COMPLETION ids ``chosen_input_ids`` /
``rejected_input_ids`` (without the prompt). The pure functions here do one step each and are
tested on their own; ``tokenize_batch`` strings them together for ``Dataset.map(batched=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .encoding import encode_texts
from .formats import common_prefix_length, render_batch
from .layouts import TOKEN_COLUMNS, Layout
from .validation import where


def split_prompt_ids(
    prompt_ids: list[int], chosen_full: list[int], rejected_full: list[int]
) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen completion, rejected completion) by the longest common TOKEN prefix.

    The prompt is the prefix shared by the prompt's own tokens and both full sequences, so
    ``prompt + completion`` is always exactly the tokenisation of the full text, and chosen and
    rejected share the same prompt ids. A BPE merge across the boundary (prompt "...: " + "blue"
    tokenising to ": " "blue" alone but ":" " blue" in full) moves the merged tokens into the
    completions. TRL's ``build_tokenized_answer`` moves the boundary back by at most ONE token per
    answer, so its chosen and rejected prompts can differ in their last token. A chat template that
    re-renders earlier turns once answered is handled before tokenising: ``formats.answers_after_prompt``
    keeps the prompt as rendered for generation.
    """
    n = common_prefix_length(prompt_ids, chosen_full, rejected_full)
    return chosen_full[:n], chosen_full[n:], rejected_full[n:]


class BlankTokens:
    """``is_blank(token_id)``: whether a token stands for whitespace only (cached per id).

    Decoded alone, SentencePiece's word-start piece ``▁`` is "": the decoder strips a leading space.
    A SentencePiece tokenizer with ``legacy=True`` writes it after every special token, so a turn end
    followed by a newline (``<|end|>\n``) is ``<|end|> ▁ \n``; a token that decodes to nothing is
    blank when its piece is ``▁`` characters only.
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._cache: dict[int, bool] = {}

    def __call__(self, token_id: int) -> bool:
        if token_id not in self._cache:
            text = self._tokenizer.decode([token_id])
            if not text:
                text = (self._tokenizer.convert_ids_to_tokens(token_id) or "").replace("\u2581", " ")
            self._cache[token_id] = bool(text) and not text.strip()
        return self._cache[token_id]


class TurnEnds:
    """``ends_turn(token_id)``: whether a completion whose last token is this one has already ended.

    EOS, or any special added token: chat templates end an answer with one, which is not always the
    tokenizer's EOS (Gemma 2's ``<end_of_turn>`` beside EOS ``<eos>``, Phi-3's ``<|end|>``, Llama 3's
    ``<|eot_id|>`` on a base tokenizer whose EOS is ``<|end_of_text|>``). The model stops there at
    inference; an EOS after it would be a token no rendered conversation contains.
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._ids: frozenset[int] | None = None  # built on first use: one scan of the added tokens

    def __call__(self, token_id: int) -> bool:
        if self._ids is None:
            added = self._tokenizer.added_tokens_decoder
            self._ids = frozenset({self._tokenizer.eos_token_id, *(i for i, t in added.items() if t.special)})
        return token_id in self._ids


def ensure_eos(
    completion: list[int],
    eos_token_id: int | None,
    is_blank: Callable[[int], bool],
    ends_turn: Callable[[int], bool] | None = None,
) -> list[int]:
    """``completion`` ending in EOS: appended only when the last non-whitespace token does not end it.

    That token ends it when it is EOS, or when ``ends_turn`` says so (``TurnEnds``: a template's turn
    end). ChatML renders an answer as ``...<|im_end|>\\n``: TRL looks only at the very last token
    ("\\n"), appends ``<|im_end|>`` and trains a double end token. Trailing whitespace tokens after the
    end token are kept, as the template wrote them.
    """
    if eos_token_id is None:
        return completion

    def ends(token_id: int) -> bool:
        return token_id == eos_token_id or (ends_turn is not None and ends_turn(token_id))

    i = len(completion) - 1
    while i >= 0 and not ends(completion[i]) and is_blank(completion[i]):
        i -= 1
    if i >= 0 and ends(completion[i]):
        return completion
    return completion + [eos_token_id]


def add_bos(prompt: list[int], bos_token_id: int | None) -> list[int]:
    """``prompt`` starting with BOS when the tokenizer has one (TRL's rule: only when missing)."""
    if bos_token_id is None or prompt[:1] == [bos_token_id]:
        return prompt
    return [bos_token_id] + prompt


def truncate_pair(
    prompt_ids: list[int],
    chosen_ids: list[int],
    rejected_ids: list[int],
    *,
    max_length: int | None,
    max_prompt_length: int | None,
    max_completion_length: int | None,
    bos_token_id: int | None = None,
) -> tuple[list[int], list[int], list[int], bool, bool]:
    """Cut a pair so that ``prompt + chosen`` and ``prompt + rejected`` fit ``max_length``.

    1. Completions longer than ``max_completion_length`` (when set) are cut from the right.
    2. Only when ``len(prompt) + max(len(chosen), len(rejected)) > max_length``: the prompt is cut
       from the LEFT (its end, next to the answer, matters most; a leading BOS is kept) by as many
       tokens as needed, but not below ``max_prompt_length`` tokens (None: never cut); then both
       completions are cut from the right to ``max_length - len(prompt)``.

    ``max_prompt_length`` is a floor for cutting, not a cap: a long prompt whose pair fits is kept.
    Returns ``(prompt, chosen, rejected, prompt_was_cut, completion_was_cut)``. Raises ValueError
    when no completion token would fit (only possible with ``max_prompt_length=None``).

    Against TRL's ``tokenize_row``: the completions are cut as TRL 1.15+ cuts them (PR #6588), each to
    the room the prompt leaves, so with the prompt whole the ids are TRL 1.15+'s. TRL up to 1.14 cut
    both to ``max_length - the longer completion``: a sequence over ``max_length`` when one answer
    alone exceeds it, and an emptied shorter answer. TRL never cuts the prompt, so a prompt that fills
    ``max_length`` leaves it an empty completion (1.15+ warns), whose mean log-prob is 0/0: here the
    prompt is cut first, and where that is not allowed the row is refused.
    """
    chosen, rejected = chosen_ids, rejected_ids
    if max_completion_length is not None:
        chosen, rejected = chosen[:max_completion_length], rejected[:max_completion_length]
    prompt = prompt_ids
    longest = max(len(chosen), len(rejected))
    if max_length is not None and len(prompt) + longest > max_length:
        keep_bos = bos_token_id is not None and prompt[:1] == [bos_token_id]
        floor = len(prompt) if max_prompt_length is None else min(len(prompt), max(max_prompt_length, int(keep_bos)))
        keep = max(max_length - longest, floor)  # what the longest answer leaves, but never below the floor
        if keep < len(prompt):
            head, body = (prompt[:1], prompt[1:]) if keep_bos else ([], prompt)
            prompt = head + body[len(body) - (keep - len(head)) :]
        room = max_length - len(prompt)
        if room < 1:
            raise ValueError(
                f"the prompt has {len(prompt)} tokens and `max_length` is {max_length}, so no completion token "
                "fits; set `max_prompt_length` to let long prompts be cut"
            )
        chosen, rejected = chosen[:room], rejected[:room]
    completion_cut = len(chosen) < len(chosen_ids) or len(rejected) < len(rejected_ids)
    return prompt, chosen, rejected, len(prompt) < len(prompt_ids), completion_cut


def tokenize_batch(
    batch: dict[str, list],
    indices: list[int],
    *,
    layout: Layout,
    tokenizer,
    is_blank: Callable[[int], bool],
    limits: dict[str, int | None],
    source: str | None = None,
    encode: Callable[[list[str]], list[list[int]]] | None = None,
    ends_turn: Callable[[int], bool] | None = None,
) -> dict[str, list[Any]]:
    """The ``Dataset.map(batched=True, with_indices=True)`` function: ids plus per-row cut flags.

    ``encode`` turns texts into ids (a ``TextEncoder``, which encodes each distinct piece once);
    without it, one plain ``tokenizer`` call. A completion already ending in a special token gets no
    EOS (``ends_turn``, a ``TurnEnds``: pass one to keep its set of ids across batches). An empty completion becomes the end token alone: EOS in the standard layout
    (what TRL's ``tokenize_row`` makes of it), the template's end of turn in a conversation.
    """
    if layout is Layout.TOKENIZED:
        rows = zip(*(batch[c] for c in TOKEN_COLUMNS), strict=True)
    else:
        prompts, fulls_chosen, fulls_rejected = render_batch(batch, layout, tokenizer)
        size = len(prompts)
        texts = [*prompts, *fulls_chosen, *fulls_rejected]
        ids = encode(texts) if encode is not None else encode_texts(tokenizer, texts)
        rows = (split_prompt_ids(ids[i], ids[size + i], ids[2 * size + i]) for i in range(size))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ends_turn = ends_turn or TurnEnds(tokenizer)
    out: dict[str, list[Any]] = {k: [] for k in TOKEN_COLUMNS}
    out.update(_prompt_cut=[], _completion_cut=[])
    for index, (prompt, chosen, rejected) in zip(indices, rows, strict=True):
        if layout is not Layout.TOKENIZED:  # token ids given by the user are theirs: no BOS/EOS edits
            prompt = add_bos(prompt, bos)
            chosen, rejected = (ensure_eos(ids, eos, is_blank, ends_turn) for ids in (chosen, rejected))
            for name, completion in (("chosen", chosen), ("rejected", rejected)):
                if not completion:  # only possible without an EOS: the loss would have no token to score
                    raise ValueError(
                        f"{where(index, source)}: `{name}` is empty and the tokenizer has no EOS token to end it; "
                        "set the tokenizer's `eos_token`"
                    )
        try:
            cut = truncate_pair(prompt, chosen, rejected, bos_token_id=bos, **limits)
        except ValueError as error:
            raise ValueError(f"{where(index, source)}: {error}") from error
        for key, value in zip(out, cut, strict=True):
            out[key].append(value)
    return out
