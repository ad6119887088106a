"""A Hugging Face tokenizer from a llama.cpp vocab-only GGUF of a SentencePiece (Llama-2 style) model.

llama.cpp's repository keeps, for its tokenizer tests, vocab-only GGUF files of real checkpoints
(``models/ggml-vocab-<name>.gguf``: pieces, scores, token types, special ids and the chat template,
no weights) beside reference tokenisations made with the checkpoint's own Hugging Face tokenizer
(``.gguf.inp``: texts, ``.gguf.out``: their ids). The PyPI sdist of llama-cpp-python vendors that
folder. This rebuilds the ``tokenizer.json`` + ``tokenizer_config.json`` a Llama-2-style checkpoint
ships, and ``check_reference`` proves it against those reference ids.

Why not ``AutoTokenizer.from_pretrained(..., gguf_file=...)``: transformers 5.16's GGUF converter
gives this vocabulary no normalizer and no byte fallback, so "Hello" becomes ``Hello`` (10994)
where the checkpoint's tokenizer gives ``▁Hello`` (15043); 45 of the reference texts come out wrong.

The tokenizer rebuilt is what transformers' ``LlamaConverter`` writes for a SentencePiece BPE model:
BPE over the pieces with byte fallback, merges ranked as SentencePiece ranks them (by the merged
piece's score), normalizer "prepend ▁, spaces to ▁"; added tokens are the GGUF's control tokens
(special) and user-defined ones (not special: Phi-3's ``</s>``). llama.cpp pads the vocabulary to the
embedding size with ``[PADnnnnn]`` pieces the checkpoint's tokenizer does not have; they are left out.

A GGUF does not carry every flag of ``tokenizer_config.json``: not ``legacy`` (whether transformers
puts ▁ after a special token) nor the added tokens' ``rstrip`` (whether the whitespace after them is
dropped). Those come from the pin (``flags``), which says where they are from.
"""

from __future__ import annotations

from pathlib import Path

UNKNOWN, CONTROL, USER_DEFINED = 2, 3, 4  # gguf's token types (NORMAL 1, UNUSED 5, BYTE 6)
REFERENCE_SEPARATOR = "\n__ggml_vocab_test__\n"


def read_gguf(path: Path) -> dict:
    """The tokenizer fields of a GGUF file: pieces, types, special ids, add_bos, chat template."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def value(key, default=None):
        return fields[key].contents() if key in fields else default

    if value("tokenizer.ggml.model") != "llama":
        raise ValueError(f"{path.name}: tokenizer.ggml.model is {value('tokenizer.ggml.model')!r}; only 'llama' "
                         "(SentencePiece BPE) is rebuilt here")
    return {
        "pieces": value("tokenizer.ggml.tokens"),
        "types": value("tokenizer.ggml.token_type"),
        "scores": value("tokenizer.ggml.scores"),
        "bos": value("tokenizer.ggml.bos_token_id"),
        "eos": value("tokenizer.ggml.eos_token_id"),
        "unk": value("tokenizer.ggml.unknown_token_id"),
        "pad": value("tokenizer.ggml.padding_token_id"),
        "add_bos": value("tokenizer.ggml.add_bos_token", True),
        "add_eos": value("tokenizer.ggml.add_eos_token", False),
        "chat_template": value("tokenizer.chat_template"),
        "context_length": value(f"{value('general.architecture')}.context_length"),
    }


def sentencepiece_merges(vocab: dict[str, int], scores: list[float]) -> list[list[str]]:
    """BPE merges in SentencePiece's order: every split of a piece into two pieces, best piece score first.

    SentencePiece BPE applies the merge whose result has the highest score; ties by the piece's id,
    then the left and right pieces' ids. Whitespace runs (``▁▁``, score -1e9 in Llama-2) therefore
    merge last; ranked by id instead, 10 of llama.cpp's reference texts come out wrong.
    """
    candidates = []
    for piece, piece_id in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                candidates.append((-scores[piece_id], piece_id, vocab[left], vocab[right], left, right))
    candidates.sort()
    return [[left, right] for *_, left, right in candidates]


def build(gguf: dict, flags: dict) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) as dicts; ``flags``: ``legacy`` and the ``rstrip`` tokens."""
    pieces, types = gguf["pieces"], gguf["types"]
    kept = [i for i, kind in enumerate(types) if kind != UNKNOWN or i == gguf["unk"]]  # drop [PADnnnnn]
    if kept != list(range(len(kept))):
        raise ValueError("the pieces left out are not all at the end of the vocabulary")
    # Added tokens: control tokens are special; user-defined ones are not (Phi-3's ``</s>``, as in its file).
    added_ids = [i for i in kept if types[i] in (CONTROL, USER_DEFINED) or i in (gguf["unk"], gguf["bos"], gguf["eos"])]
    # The SentencePiece model's pieces end where the trailing run of added tokens begins (Phi-3's
    # <|endoftext|> ... <|user|>); <unk>, <s>, </s> are pieces and added tokens at once, as in Llama-2's file.
    model_size = len(kept)
    while model_size and types[model_size - 1] in (CONTROL, USER_DEFINED):
        model_size -= 1
    vocab = {pieces[i]: i for i in range(model_size)}
    rstrip, added_pieces = set(flags["rstrip"]), {pieces[i] for i in added_ids}
    if not rstrip <= added_pieces:
        raise ValueError(f"flags name rstrip tokens that are not added tokens: {sorted(rstrip - added_pieces)}")
    added = [
        {"id": i, "content": pieces[i], "single_word": False, "lstrip": False, "rstrip": pieces[i] in rstrip,
         "normalized": False, "special": types[i] != USER_DEFINED}
        for i in added_ids
    ]
    bos = pieces[gguf["bos"]]
    single = [{"Sequence": {"id": "A", "type_id": 0}}]
    pair = [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}]
    if gguf["add_bos"]:
        single.insert(0, {"SpecialToken": {"id": bos, "type_id": 0}})
        pair = [single[0], pair[0], {"SpecialToken": {"id": bos, "type_id": 1}}, pair[1]]
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        ]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing", "single": single, "pair": pair,
            "special_tokens": {bos: {"id": bos, "ids": [gguf["bos"]], "tokens": [bos]}} if gguf["add_bos"] else {},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": pieces[gguf["unk"]], "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
            "vocab": vocab, "merges": sentencepiece_merges(vocab, gguf["scores"]),
        },
    }
    config = {
        "add_bos_token": bool(gguf["add_bos"]),
        "add_eos_token": bool(gguf["add_eos"]),
        "bos_token": bos,
        "eos_token": pieces[gguf["eos"]],
        "unk_token": pieces[gguf["unk"]],
        "pad_token": pieces[gguf["pad"]] if gguf["pad"] is not None else None,
        "clean_up_tokenization_spaces": False,
        "legacy": flags["legacy"],
        "model_max_length": gguf["context_length"],
        "tokenizer_class": "LlamaTokenizer",
        "chat_template": gguf["chat_template"],
    }
    return tokenizer_json, config


def reference_cases(inp: str, out: str) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs of llama.cpp's reference files (``.gguf.inp`` / ``.gguf.out``)."""
    texts = inp.split(REFERENCE_SEPARATOR)  # every text is followed by the separator
    if texts[-1] != "":
        raise ValueError("the reference texts do not end with the separator")
    texts.pop()
    rows = out.split("\n")  # one line per text, the ids after a space each; the file ends with a newline
    rows.pop()
    if len(texts) != len(rows):
        raise ValueError(f"reference files disagree: {len(texts)} texts, {len(rows)} id rows")
    return [(text, [int(x) for x in row.split()]) for text, row in zip(texts, rows, strict=True)]


def check_reference(tokenizer_file: Path, cases: list[tuple[str, list[int]]], label: str) -> int:
    """ValueError unless ``tokenizer_file`` gives every reference text its reference ids; the count checked.

    Checked with the ``tokenizers`` pipeline the file declares, which is the checkpoint's (SentencePiece's
    ids, as the reference files hold them). transformers 5's ``LlamaTokenizer`` replaces that pipeline
    with its own Metaspace pre-tokenizer, for this file as for the checkpoint's: it drops one leading
    space of a text that starts with spaces (" Hello" -> ▁Hello), and gives the same ids otherwise.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    wrong = [(text, ids, tokenizer.encode(text, add_special_tokens=False).ids) for text, ids in cases]
    wrong = [case for case in wrong if case[1] != case[2]]
    if wrong:
        text, expected, got = wrong[0]
        raise ValueError(f"{label}: {len(wrong)} of {len(cases)} reference texts tokenise differently, first "
                         f"{text[:40]!r}: expected {expected[:12]}, got {got[:12]}")
    return len(cases)
