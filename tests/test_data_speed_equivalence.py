"""The fast tokenisation path gives exactly the ids of the straightforward one, on every row of the test data.

``prepare_preference_dataset`` encodes each distinct piece of text once (``data/encoding.py``) and,
for GPT-2 byte-level tokenizers like SmolLM2's, splits words in Python and runs BPE once per
distinct word (``data/bytelevel.py``). The reference here is the plain recipe: tokenise the prompt,
prompt + chosen and prompt + rejected one text at a time, split at their longest common token
prefix, then BOS / EOS / truncation. Every row of every file of tests/assets/pairs that the pipeline
reads directly (English and Chinese ShareGPT conversations, the H4 implicit prompt, stack-exchange
as standard and implicit text) must give the same ids, with truncation on and off. No timing here:
``benchmarks/preprocess.py`` measures the speed.
"""

from __future__ import annotations

import pytest
from testkit import conversational_rows, dataset, smollm2_tokenizer, standard_rows, ultrafeedback_rows

from merlina_orpo_plugin.data import OUTPUT_COLUMNS, bytelevel, prepare_preference_dataset
from merlina_orpo_plugin.data.encoding import TextEncoder, _plan
from merlina_orpo_plugin.data.formats import render_batch
from merlina_orpo_plugin.data.layouts import detect_layout
from merlina_orpo_plugin.data.tokenize import BlankTokens, add_bos, ensure_eos, truncate_pair

TRUNCATION = {
    "off": dict(max_length=None, max_prompt_length=None),
    "on": dict(max_length=256, max_prompt_length=128),
}


def standard_implicit_rows() -> list[dict]:
    """The stack-exchange pairs as whole strings: the implicit-prompt text layout."""
    return [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in standard_rows()]


DATASETS = {
    "sharegpt_en": conversational_rows,
    "sharegpt_zh": lambda: conversational_rows("sharegpt_zh.json"),
    "ultrafeedback": ultrafeedback_rows,
    "stack_exchange": standard_rows,
    "stack_exchange_implicit": standard_implicit_rows,
}


def common_prefix(*sequences: list[int]) -> int:
    n = 0
    while all(n < len(s) for s in sequences) and len({s[n] for s in sequences}) == 1:
        n += 1
    return n


def reference_ids(rows: list[dict], tok) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) ids before truncation: every whole text through ``tok``."""
    data = dataset(rows)
    texts = render_batch(data[:], detect_layout(data), tok)
    prompts, fulls_chosen, fulls_rejected = (tok(list(t), add_special_tokens=False)["input_ids"] for t in texts)
    is_blank = BlankTokens(tok)
    out = []
    for prompt, chosen, rejected in zip(prompts, fulls_chosen, fulls_rejected, strict=True):
        n = common_prefix(prompt, chosen, rejected)
        out.append(
            (
                add_bos(chosen[:n], tok.bos_token_id),
                ensure_eos(chosen[n:], tok.eos_token_id, is_blank),
                ensure_eos(rejected[n:], tok.eos_token_id, is_blank),
            )
        )
    return out


_REFERENCE: dict[str, list] = {}


def reference_for(name: str, tok) -> list:
    """The reference ids of a dataset, computed once per test session (seconds per dataset)."""
    if name not in _REFERENCE:
        _REFERENCE[name] = reference_ids(DATASETS[name](), tok)
    return _REFERENCE[name]


def test_smollm2_takes_the_fast_path():
    # Otherwise the equivalence checks below would only compare the plain call with itself.
    plan = _plan(smollm2_tokenizer())
    assert plan is not None and plan.words is not None


@pytest.mark.parametrize("truncation", sorted(TRUNCATION))
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_fast_path_matches_the_reference_on_every_row(name, truncation):
    tok, rows = smollm2_tokenizer(), DATASETS[name]()
    limits = {**TRUNCATION[truncation], "max_completion_length": None}
    out, stats = prepare_preference_dataset(dataset(rows), tok, **limits)
    assert len(out) == len(rows) == stats.pairs
    ours = out[:]
    for index, (prompt, chosen, rejected) in enumerate(reference_for(name, tok)):
        expected = truncate_pair(prompt, chosen, rejected, bos_token_id=tok.bos_token_id, **limits)[:3]
        got = tuple(ours[column][index] for column in OUTPUT_COLUMNS)
        assert got == expected, f"{name} row {index} (truncation {truncation})"


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_text_encoder_matches_the_tokenizer_on_every_rendered_text(name):
    tok = smollm2_tokenizer()
    data = dataset(DATASETS[name]())
    texts = [t for part in render_batch(data[:], detect_layout(data), tok) for t in part]
    assert TextEncoder(tok)(texts) == tok(texts, add_special_tokens=False)["input_ids"]


# Characters where a regex engine's classes could differ from Oniguruma's (Rust): other scripts'
# digits and letters, symbols, C0/C1 controls that Python calls whitespace, no-break and zero-width
# spaces, combining marks, emoji sequences, letters added in recent Unicode versions, and ASCII edge
# cases of the GPT-2 pattern (contractions, whitespace runs before a word, CRLF).
AWKWARD = [
    "I'm he's we'll they've you're I'd 'S 'LL don''t  double  space \t\ttab\r\nCRLF\n\n\nend  ",
    "x\x1cy\x1dz\x1e\x1fw \x85next\u00a0nbsp\u2007figure\u202fnarrow\u3000ideographic\u200bzw\u2028line\u2029para",
    "٣٤ ²³ ½ Ⅻ ௰ 𝟙𝟚 ①② 12,345.67 ৪",
    "e\u0301 n\u0303 Å 𝒜𝓑 ǅ ʰ ー 々 〆 ㄅ ꙮ",
    "👩\u200d👩\u200d👧 🇫🇷 ✔︎ ❤️ ©® ™ ¶ § ← → ∑ ∞",
    "Ქართული ᲐᲑᲒ 𞓐𞓑 𐴀 𑶠 Ɤ Ꟑ 𝼀",
    "<|im_start|>user\nmixed <|im_end|> pieces<|im_start|><|im_end|>\n<|endoftext|>",
    "",
]


def test_text_encoder_matches_the_tokenizer_on_awkward_characters():
    tok = smollm2_tokenizer()
    encoder = TextEncoder(tok)
    assert encoder(AWKWARD) == tok(AWKWARD, add_special_tokens=False)["input_ids"]
    # each text alone and all of them in one text, so no piece's ids come from another's cache
    for text in [*AWKWARD, "".join(AWKWARD)]:
        assert TextEncoder(tok)([text]) == [tok(text, add_special_tokens=False)["input_ids"]], repr(text)


def test_text_with_a_character_rust_classes_differently_goes_to_rust(monkeypatch):
    # No character of the test data disagrees today; pretend one does, as a new Unicode version could.
    tok = smollm2_tokenizer()
    monkeypatch.setattr(bytelevel, "_AGREED", bytelevel._AGREED - {"é"})
    monkeypatch.setattr(bytelevel, "_DIFFERS", bytelevel._DIFFERS | {"é"})
    encoder = TextEncoder(tok)
    texts = ["café au lait", "plain ascii", "naïve"]
    assert encoder._get_plan().words.split(texts[0]) is None
    assert encoder(texts) == tok(texts, add_special_tokens=False)["input_ids"]


def test_text_encoder_falls_back_when_special_tokens_are_split():
    tok = smollm2_tokenizer()
    tok = tok.__class__.from_pretrained(tok.name_or_path, split_special_tokens=True)  # a copy we may change
    assert _plan(tok) is None
    texts = ["<|im_start|>user\nhi<|im_end|>\n"]
    assert TextEncoder(tok)(texts) == tok(texts, add_special_tokens=False)["input_ids"]


def _tiny_tokenizer(pre_tokenizer, normalizer=None, added=()):
    """A BPE tokenizer trained in-process on a few lines, wrapped as a transformers fast tokenizer."""
    from tokenizers import AddedToken, Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizer
    backend.normalizer = normalizer
    lines = ["Hello world, this is a Test.", "héllo wörld 中文 again and AGAIN 42", "tokens [MASK] <s> </s> more"]
    backend.train_from_iterator(lines * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    backend.add_special_tokens([AddedToken("<s>", normalized=False), AddedToken("</s>", normalized=False)])
    backend.add_tokens(list(added))
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def _tiny_cases():
    from tokenizers import AddedToken, normalizers, pre_tokenizers

    mask = AddedToken("[MASK]", normalized=True)
    return {
        # cut at added tokens, pieces encoded by Rust (normalised added token matched by Rust too)
        "whitespace+lowercase": (pre_tokenizers.Whitespace(), normalizers.Lowercase(), [mask], True),
        "sequence+nfkc": (
            pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits()]),
            normalizers.NFKC(), [], True,
        ),
        # byte-level words in Python, normalised added token cut in Python
        "bytelevel+normalized-token": (pre_tokenizers.ByteLevel(add_prefix_space=False), None, [mask], True),
        # a piece alone could differ from the piece in its text: the plain call
        "metaspace-first": (pre_tokenizers.Metaspace(prepend_scheme="first"), None, [], False),
        "bytelevel-prefix-space": (pre_tokenizers.ByteLevel(add_prefix_space=True), None, [], False),
        "lstrip-token": (pre_tokenizers.Whitespace(), None, [AddedToken("[MASK]", lstrip=True)], False),
    }


@pytest.mark.parametrize("case", ["whitespace+lowercase", "sequence+nfkc", "bytelevel+normalized-token",
                                  "metaspace-first", "bytelevel-prefix-space", "lstrip-token"])
def test_other_pipelines_cut_only_where_exact(case):
    pre_tokenizer, normalizer, added, cut = _tiny_cases()[case]
    tok = _tiny_tokenizer(pre_tokenizer, normalizer, added)
    assert (_plan(tok) is not None) == cut
    texts = ["<s>Hello [MASK] World</s> héllo", "[mask]x<s></s>  spaced  out 123 ", "", "no specials", "<s>", *AWKWARD]
    assert TextEncoder(tok)(texts) == tok(texts, add_special_tokens=False)["input_ids"]
