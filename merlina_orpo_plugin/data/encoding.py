"""Token ids of many texts, each distinct piece of text encoded once: exactly ``tokenizer(texts)``'s ids.

Why: a preference row is encoded three times (prompt, prompt + chosen, prompt + rejected), so the
prompt, usually the longest part, went through the tokenizer three times, and every row repeats the
same system turn. ``tokenizers`` cuts a text at its added tokens (``<|im_start|>`` ...) FIRST and
then normalises, pre-tokenises and encodes each piece between them on its own, so the ids of a text
are the ids of its pieces, joined. ``TextEncoder`` cuts the same way in Python, encodes each
distinct piece of a ``Dataset.map`` batch once, and joins: a ChatML prompt's turns are encoded once
per row instead of three times, a shared system turn once per batch.

``TextEncoder`` falls back to the plain ``tokenizer(texts)`` call whenever it cannot show the cut
is the tokenizer's own (``_plan`` lists the conditions); ``tests/test_data_speed_equivalence.py``
checks the ids against that call on every row of the shared datasets.
"""

from __future__ import annotations

import json
import re
from itertools import chain

from .bytelevel import ByteLevelWords

# Pre-tokenizers that treat every piece alike wherever it stands in the text. Metaspace (prefix
# "▁" on the first piece only) and ByteLevel with `add_prefix_space` are left out: a piece encoded
# alone could get a prefix it does not get inside the text.
_PIECEWISE_PRE_TOKENIZERS = {
    "Split", "Whitespace", "WhitespaceSplit", "Punctuation", "Digits", "BertPreTokenizer", "UnicodeScripts",
    "CharDelimiterSplit",
}


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """The reference: one ``tokenizer`` call for all ``texts`` (Rust encodes the batch)."""
    # `verbose=False` mutes the "longer than model_max_length" warning: truncation is ours to do.
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]


def _piecewise(pre_tokenizer: dict | None) -> bool:
    """Whether a pre-tokenizer (its JSON) gives a piece the same words alone as inside a text."""
    if pre_tokenizer is None:
        return True
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        return all(_piecewise(p) for p in pre_tokenizer.get("pretokenizers", []))
    if kind == "ByteLevel":
        return not pre_tokenizer.get("add_prefix_space")
    return kind in _PIECEWISE_PRE_TOKENIZERS


def _alternation(contents: list[str]) -> re.Pattern | None:
    """Leftmost-longest match of any of ``contents`` (as tokenizers' Aho-Corasick), in a split group."""
    longest_first = sorted(filter(None, contents), key=len, reverse=True)  # tokenizers ignores empty ones
    if not longest_first:
        return None
    return re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")


class _Plan:
    """How a tokenizer cuts text: the added-token patterns, their ids, and the word splitter if any."""

    def __init__(self, backend, added: dict[int, object], pre_tokenizer: dict | None):
        normalize_in_rust = backend.normalizer is not None
        special = [t.content for t in added.values() if not t.normalized]
        normalized = [t.content for t in added.values() if t.normalized]
        # tokenizers cuts at non-normalised added tokens first, then at normalised ones inside the
        # normalised pieces; with a normaliser that second cut is left to Rust, piece by piece.
        self.first = _alternation(special)
        self.second = None if normalize_in_rust else _alternation(normalized)
        self.words = None if normalize_in_rust else ByteLevelWords.for_backend(backend, pre_tokenizer)
        # The ids of the added tokens Python cuts at, and of "" (a cut at either end of a text).
        cut_at = set(special) | (set(normalized) if self.second is not None else set())
        self.known: dict[str, list[int]] = {"": []}
        self.known.update({t.content: [token_id] for token_id, t in added.items() if t.content in cut_at})

    def pieces(self, text: str) -> list[str]:
        """``text`` cut at added tokens: text pieces and token contents, in order."""
        parts = self.first.split(text) if self.first is not None else [text]
        if self.second is not None:
            parts = list(chain.from_iterable(self.second.split(p) if i % 2 == 0 else (p,) for i, p in enumerate(parts)))
        return parts


def _plan(tokenizer) -> _Plan | None:
    """A ``_Plan`` when cutting at added tokens provably gives ``tokenizer``'s ids, else None.

    Conditions: a ``transformers`` fast tokenizer whose call is the stock one (it then encodes with
    the Rust backend only); special tokens are not split (``split_special_tokens``); no added token
    strips or requires whitespace around it (``lstrip``/``rstrip``/``single_word`` change the cut);
    a pre-tokenizer that treats a piece alike alone and in a text (see ``_piecewise``).
    """
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - other transformers layouts take the plain call
        return None
    kind = type(tokenizer)
    if not isinstance(tokenizer, TokenizersBackend) or getattr(tokenizer, "split_special_tokens", False):
        return None
    if kind._encode_plus is not TokenizersBackend._encode_plus or kind.__call__ is not PreTrainedTokenizerBase.__call__:
        return None
    backend = tokenizer.backend_tokenizer
    added = backend.get_added_tokens_decoder()
    if any(t.lstrip or t.rstrip or t.single_word for t in added.values()):
        return None
    pre = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer is not None else None
    if not _piecewise(pre):
        return None
    return _Plan(backend, added, pre)


class TextEncoder:
    """``encoder(texts)``: the ids ``encode_texts(tokenizer, texts)`` gives, each distinct piece encoded once.

    One encoder serves one pipeline call (``prepare_preference_dataset`` or ``tokenise_checked``). Pieces are shared within one call
    (one ``Dataset.map`` batch: a row's prompt is in its three texts); the word cache of
    ``ByteLevelWords`` spans calls, bounded. Pickles without caches (``map(num_proc=...)`` workers).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._state: _Plan | None | bool = False  # False: not built yet

    def __getstate__(self) -> dict:
        return {"tokenizer": self.tokenizer, "_state": False}

    def _get_plan(self) -> _Plan | None:
        if self._state is False:
            self._state = _plan(self.tokenizer)
        return self._state

    def __call__(self, texts: list[str]) -> list[list[int]]:
        plan = self._get_plan()
        if plan is None:
            return encode_texts(self.tokenizer, texts)
        cut = [plan.pieces(text) for text in texts]
        ids = dict(plan.known)
        self._encode_pieces(plan, list({p for parts in cut for p in parts}.difference(ids)), ids)
        get = ids.__getitem__
        return [list(chain.from_iterable(map(get, parts))) for parts in cut]

    def _encode_pieces(self, plan: _Plan, pieces: list[str], ids: dict[str, list[int]]) -> None:
        """Add the ids of ``pieces`` to ``ids``: Python words where exact, the tokenizer for the rest."""
        rest = []
        for piece in pieces:
            words = plan.words.split(piece) if plan.words is not None else None
            if words is None:
                rest.append(piece)
            else:
                ids[piece] = plan.words.encode(words)
        if rest:
            ids.update(zip(rest, encode_texts(self.tokenizer, rest), strict=True))
