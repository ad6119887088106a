"""GPT-2 byte-level BPE split into words in Python, for tokenizers where that provably gives Rust's ids.

Why: on a 2-core machine the Rust ``ByteLevel`` pre-tokenizer is the slow part of ``tokenizers``
(under 1 M chars/s; Python's ``re`` runs the same split on ASCII text at about 10 M chars/s), and
natural text repeats its words: 300 LLaMA-Factory pairs hold 288k words but only 21k distinct ones.
So we split with the same regular expression in Python and run the BPE model once per DISTINCT word.

Why it is exact: Rust (1) cuts the text at added tokens (``encoding.py`` does that), (2) splits
each piece with ``GPT2_PATTERN``, (3) maps each word's UTF-8 bytes to the byte-level alphabet and
(4) runs the BPE model on each word alone. We do (2) and (3) in Python and call the tokenizer's own
model for (4). ``ByteLevelWords.for_backend`` accepts only that pipeline (``ByteLevel`` with
``use_regex`` and no prefix space, no normaliser) and checks our byte table and split against Rust
on fixed strings. The split depends only on each character's class (letter, number, whitespace,
other), and every character is checked against Rust (``_probe``) before we split text holding it;
``split`` returns None for text with a character Rust classes differently, and that text goes to
the Rust tokenizer.
"""

from __future__ import annotations

import re
from itertools import chain

try:  # `regex` ships with transformers; without it only ASCII text takes the Python path
    import regex
except ImportError:  # pragma: no cover
    regex = None

# tokenizers' ByteLevel pattern (pre_tokenizers/byte_level.rs), unchanged since GPT-2.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same pattern for ASCII text, where the classes are plain sets: `re` runs it about 3x faster.
_WS = r"\t\n\x0b\x0c\r "
ASCII_PATTERN = rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
# Strings whose split takes every branch of the pattern (contractions, whitespace runs before a
# word, trailing whitespace): a different pattern in a future `tokenizers` fails one of them.
_SHAPES = (
    "I'm he's we'll they've you're I'd don't 's'",
    "a  b \n c\n\n\nd\t \te  ",
    "  x",
    "x,y;z... ok?! (a) [b] {c} <d>",
    "3.14 and 2024-05-01 100% $5",
    "'''s' 'S 'LL''",
    "a\r\nb \x0b\x0cc\r\n\r\n",
)
# A character is one word with the prefix of its own class and two words with any other.
_CLASS_PREFIX = {"letter": "a", "number": "1", "other": "!", "space": "\n"}
# Characters Rust puts in our class, and those it does not. The verdicts depend only on the
# `tokenizers` build (one ByteLevel pattern for all tokenizers) and ours, so they hold process-wide.
_AGREED: set[str] = set()
_DIFFERS: set[str] = set()
# Distinct words whose ids are kept (about 30 MB); natural text needs far fewer for a high hit rate.
_MAX_CACHED_WORDS = 200_000


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, as tokenizers' ByteLevel uses it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# str.translate table from latin-1 code points (one per UTF-8 byte) to the byte-level alphabet.
_BYTE_TABLE = {b: ord(c) for b, c in _bytes_to_unicode().items()}
# Characters whose UTF-8 forms hold every byte value UTF-8 uses (0x00-0xF4).
_ALL_BYTES = "".join(map(chr, [*range(0x800), *(c for c in range(0x800, 0x110000, 0x800) if not 0xD800 <= c < 0xE000)]))


def to_byte_level(word: str) -> str:
    """``word``'s UTF-8 bytes in the byte-level alphabet: what Rust's BPE model sees."""
    return word.encode("utf-8").decode("latin-1").translate(_BYTE_TABLE)


def _ascii_class(char: str) -> str:
    if char.isalpha():
        return "letter"
    if char.isdigit():
        return "number"
    return "space" if char in "\t\n\x0b\x0c\r " else "other"


def _unicode_class(char: str) -> str:
    for kind, pattern in _UNICODE_CLASSES:
        if pattern.match(char):
            return kind
    return "other"


_UNICODE_CLASSES = (
    [(kind, regex.compile(p)) for kind, p in (("letter", r"\p{L}"), ("number", r"\p{N}"), ("space", r"\s"))]
    if regex is not None
    else []
)


class ByteLevelWords:
    """Text -> words -> ids, with one BPE call per distinct word (``encode``).

    Built by ``for_backend`` only for a pipeline it reproduces exactly. Its word cache lives as long
    as it does (one ``prepare_preference_dataset`` call), up to ``_MAX_CACHED_WORDS`` words.
    """

    def __init__(self, backend):
        self._backend = backend
        self._model = backend.model
        self._ascii = re.compile(ASCII_PATTERN)
        self._unicode = regex.compile(GPT2_PATTERN) if regex is not None else None
        self._word_ids = _WordIds(self._model)

    @classmethod
    def for_backend(cls, backend, pre_tokenizer: dict | None) -> ByteLevelWords | None:
        """An instance when ``backend`` (a ``tokenizers.Tokenizer`` whose pre-tokenizer has the JSON
        ``pre_tokenizer``) is plain GPT-2 byte-level BPE and agrees with us on the checks, else None."""
        if backend.normalizer is not None or pre_tokenizer is None or pre_tokenizer.get("type") != "ByteLevel":
            return None
        if not pre_tokenizer.get("use_regex", True) or pre_tokenizer.get("add_prefix_space", True):
            return None
        if getattr(backend.model, "dropout", None):  # BPE dropout samples per call: nothing to reuse
            return None
        words = cls(backend)
        return words if words._agrees_with_rust() else None

    def _agrees_with_rust(self) -> bool:
        """Our byte table, our splits of the fixed shapes and our classes of the ASCII characters are Rust's."""
        from tokenizers import pre_tokenizers

        mapped = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(_ALL_BYTES)
        if [piece for piece, _ in mapped] != [to_byte_level(_ALL_BYTES)]:
            return False
        pre_tokenize = self._backend.pre_tokenizer.pre_tokenize_str
        patterns = [self._ascii] if self._unicode is None else [self._ascii, self._unicode]
        for shape in _SHAPES:
            rust = [shape[start:end] for _, (start, end) in pre_tokenize(shape)]
            if any(pattern.findall(shape) != rust for pattern in patterns):
                return False
        return self._chars_ok("".join(map(chr, range(128))))

    def _chars_ok(self, chars) -> bool:
        """Whether Rust puts every character of ``chars`` in the class our pattern does."""
        distinct = set(chars)
        if distinct <= _AGREED:  # the usual answer, from one set operation
            return True
        for char in distinct - _AGREED - _DIFFERS:
            (_AGREED if self._probe(char) else _DIFFERS).add(char)
        return distinct <= _AGREED

    def _probe(self, char: str) -> bool:
        """Whether Rust's class of ``char`` is ours: ``prefix + char`` is one Rust word.

        One probe suffices: the classes are disjoint (Unicode letters, numbers and white space
        share no character), so a character in our class cannot be in another of Rust's. An ASCII
        character must also be in the same class for both our patterns: text with other characters
        goes through ``GPT2_PATTERN`` whole, ASCII included.
        """
        if self._unicode is None:
            kind = _ascii_class(char) if char.isascii() else None
        else:
            kind = _unicode_class(char)
            if char.isascii() and _ascii_class(char) != kind:
                kind = None
        return kind is not None and len(self._backend.pre_tokenizer.pre_tokenize_str(_CLASS_PREFIX[kind] + char)) == 1

    def split(self, text: str) -> list[str] | None:
        """The words Rust's ByteLevel pre-tokenizer makes of ``text``, or None when we cannot be sure."""
        if text.isascii():
            return self._ascii.findall(text)
        if self._unicode is None or not self._chars_ok(text):
            return None
        return self._unicode.findall(text)

    def encode(self, words: list[str]) -> list[int]:
        """The ids of a list of words (from ``split``): BPE once per distinct word."""
        if len(self._word_ids) > _MAX_CACHED_WORDS:  # a huge dataset's vocabulary would fill memory
            self._word_ids.clear()
        return list(chain.from_iterable(map(self._word_ids.__getitem__, words)))


class _WordIds(dict):
    """word -> BPE ids, computed by the model on first use (``dict.__missing__``), so a lookup of a
    known word stays a C-level dict access inside ``map``."""

    def __init__(self, model):
        super().__init__()
        self._tokenize = model.tokenize

    def __missing__(self, word: str) -> list[int]:
        ids = self[word] = [token.id for token in self._tokenize(to_byte_level(word))]
        return ids
