"""Tokenisation for encoder-decoder models: the prompt for the encoder, each completion as decoder labels.

As TRL 1.9's ``is_encoder_decoder`` path: the prompt text and each completion text are tokenised on
their own, with the tokenizer's special tokens (T5 ends each with ``</s>``, BART wraps each in
``<s> ... </s>``): there is no shared token prefix to find, the encoder reads the prompt and the
decoder predicts the completion. Texts come from the same rendering as the decoder-only path
(``formats.render_batch``); a completion is its full text minus the prompt text, as TRL's chat
template step cuts it. Limits: completions are cut from the right to ``max_completion_length``
(else ``max_length``); prompts keep their last ``max_length`` tokens (TRL cuts neither).
"""

from __future__ import annotations

from typing import Any

from .formats import render_batch
from .layouts import TOKEN_COLUMNS, Layout
from .validation import where


def tokenize_encoder_decoder_batch(
    batch: dict[str, list],
    indices: list[int],
    *,
    layout: Layout,
    tokenizer,
    limits: dict[str, int | None],
    source: str | None = None,
    **_unused: Any,
) -> dict[str, list[Any]]:
    """The ``Dataset.map`` function for encoder-decoder models: ids plus per-row cut flags."""
    if layout is Layout.TOKENIZED:
        prompts, chosen, rejected = (list(map(list, batch[c])) for c in TOKEN_COLUMNS)
    else:
        prompt_texts, fulls_chosen, fulls_rejected = render_batch(batch, layout, tokenizer)
        completions = _completions(prompt_texts, fulls_chosen, fulls_rejected, indices, source)
        size = len(prompt_texts)
        ids = tokenizer([*prompt_texts, *completions], add_special_tokens=True, return_attention_mask=False,
                        verbose=False)["input_ids"]
        prompts, chosen, rejected = ids[:size], ids[size : 2 * size], ids[2 * size :]
    completion_limit = limits.get("max_completion_length") or limits.get("max_length")
    prompt_limit = limits.get("max_length")
    out: dict[str, list[Any]] = {k: [] for k in TOKEN_COLUMNS}
    out.update(_prompt_cut=[], _completion_cut=[])
    for index, prompt, good, bad in zip(indices, prompts, chosen, rejected, strict=True):
        for name, completion in (("chosen", good), ("rejected", bad)):
            if not completion:
                raise ValueError(f"{where(index, source)}: `{name}` tokenises to no ids (the tokenizer adds no EOS)")
        cut_prompt = prompt[-prompt_limit:] if prompt_limit and len(prompt) > prompt_limit else prompt
        cut_good, cut_bad = (c[:completion_limit] if completion_limit else c for c in (good, bad))
        for key, value in zip(TOKEN_COLUMNS, (cut_prompt, cut_good, cut_bad), strict=True):
            out[key].append(value)
        out["_prompt_cut"].append(len(cut_prompt) < len(prompt))
        out["_completion_cut"].append(len(cut_good) < len(good) or len(cut_bad) < len(bad))
    return out


def _completions(prompts: list[str], fulls_chosen: list[str], fulls_rejected: list[str], indices, source) -> list[str]:
    """Each full text minus its prompt text: chosen completions, then rejected ones."""
    out = []
    for fulls in (fulls_chosen, fulls_rejected):
        for index, prompt, full in zip(indices, prompts, fulls, strict=True):
            out.append(_after(prompt, full, index, source))
    return out


def _after(prompt: str, full: str, index: int, source: str | None) -> str:
    if not full.startswith(prompt):
        raise ValueError(
            f"{where(index, source)}: the chat template renders the conversation differently after the prompt, "
            "so the completion cannot be cut from it for an encoder-decoder model"
        )
    return full[len(prompt):]
