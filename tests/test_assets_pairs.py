"""The project's own preference-data files in tests/assets/pairs: layouts, counts, quirks, coverage.

Checked against: a fresh run of `build.py` (the committed files must be its output, byte for
byte); the public schemas each file imitates (keys, key order where the public files fix it,
types per row); the counts and quirks tests/assets/pairs/README.md promises (HH-RLHF rows with an
empty final turn in both spellings, identical pairs, no leading "\\n\\n", H4 score ties, ...); and
the text features the tokenizer-equivalence tests need (contractions, whitespace runs, CRLF, emoji
ZWJ sequences, scripts, combining marks, chat markup). Pure Python, no tokenizer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys

import pytest

from testkit import PAIRS, pairs_rows

SHAREGPT_KEYS = ["conversations", "chosen", "rejected"]
H4_KEYS = ["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"]
ORCA_KEYS = ["system", "question", "chosen", "rejected"]
MIX_KEYS = ["dataset", "chosen", "rejected", "chosen_rating", "rejected_rating"]
MIX_SOURCES = {
    "argilla/distilabel-capybara-dpo-7k-binarized",
    "argilla/distilabel-intel-orca-dpo-pairs",
    "argilla/ultrafeedback-binarized-preferences-cleaned",
}
CAPY_KEYS = ["source", "conversation", "original_response", "generation_prompt", "raw_generation_responses",
             "new_generations", "prompt", "chosen", "rejected", "rating_chosen", "rating_rejected",
             "chosen_model", "rejected_model"]
HH_SUBSETS = {"harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"}


def _load_build():
    spec = importlib.util.spec_from_file_location("pairs_build", PAIRS / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pairs_build", module)
    spec.loader.exec_module(module)
    return module


def _rows(name, keys, at_least):
    """(where, row) for each row of ``name``, after checking the count and each row's keys in order."""
    rows = pairs_rows(name)
    assert len(rows) >= at_least, f"{name}: {len(rows)} rows"
    located = [(f"{name}:{i + 1}", row) for i, row in enumerate(rows)]
    for where, row in located:
        assert list(row) == keys, where
    return located


def _messages(value, where):
    assert isinstance(value, list) and value, f"{where}: expected a non-empty message list"
    for m in value:
        assert list(m) == ["content", "role"] and all(isinstance(v, str) for v in m.values()), f"{where}: {m!r}"
    return [m["role"] for m in value]


def _alternates(roles, where):
    body = roles[1:] if roles and roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    assert body == expected[: len(body)] and body[-1] == "assistant", f"{where}: roles {roles}"


def test_committed_files_are_what_build_writes():
    built = _load_build().build()
    assert sorted(built) == sorted(p.name for p in PAIRS.iterdir() if p.suffix in {".json", ".jsonl"})
    for name, text in built.items():
        assert (PAIRS / name).read_text(encoding="utf-8") == text, f"{name}: run `python tests/assets/pairs/build.py`"


def _sharegpt_rows(name, at_least):
    located = _rows(name, SHAREGPT_KEYS, at_least)
    for where, row in located:
        turns = row["conversations"]
        for turn in [*turns, row["chosen"], row["rejected"]]:
            assert list(turn) == ["from", "value"] and isinstance(turn["value"], str), f"{where}: {turn!r}"
        assert row["chosen"]["from"] == row["rejected"]["from"] == "gpt", where
        speakers = [t["from"] for t in turns]
        body = speakers[1:] if speakers[:1] == ["system"] else speakers
        assert body == ["human", "gpt"] * (len(body) // 2) + ["human"], f"{where}: {speakers}"
    return [row for _, row in located]


def _human_turns(row):
    return sum(t["from"] == "human" for t in row["conversations"])


def test_sharegpt_en_counts_and_lengths():
    rows = _sharegpt_rows("sharegpt_en.json", at_least=300)
    n = len(rows)
    single = sum(_human_turns(r) == 1 for r in rows)
    assert 0.35 <= single / n <= 0.45, single
    assert {_human_turns(r) for r in rows} == {1, 2, 3, 4}
    assert 0.20 <= sum(r["conversations"][0]["from"] == "system" for r in rows) / n <= 0.30
    answers = [len(r[k]["value"]) for r in rows for k in ("chosen", "rejected")]
    assert sum(200 <= a <= 1500 for a in answers) / len(answers) >= 0.6
    long_pairs = sum(max(len(r["chosen"]["value"]), len(r["rejected"]["value"])) >= 2000 for r in rows)
    assert long_pairs / n >= 0.08 and max(answers) <= 8000
    assert all(r["chosen"]["value"] != r["rejected"]["value"] for r in rows)


def test_sharegpt_zh_is_chinese_with_code_and_multi_turn():
    rows = _sharegpt_rows("sharegpt_zh.json", at_least=80)
    assert sum(_human_turns(r) > 1 for r in rows) >= 20
    text = json.dumps(rows, ensure_ascii=False)
    assert len(re.findall(r"[\u4e00-\u9fff]", text)) > 20_000
    for needle in ("，", "。", "：", "？", "（", "```python", "```sql", "```bash"):
        assert needle in text, needle
    assert sum(bool(re.search(r"[A-Za-z]{4,}", r["conversations"][-1]["value"])) for r in rows) >= 15


def test_ultrafeedback_h4_schema_and_ties():
    located = _rows("ultrafeedback_h4.jsonl", H4_KEYS, at_least=24)
    for where, row in located:
        assert row["prompt_id"] == hashlib.sha256(row["prompt"].encode("utf-8")).hexdigest(), where
        for side in ("chosen", "rejected"):
            assert _messages(row[side], where) == ["user", "assistant"], where
            assert row[side][0]["content"] == row["prompt"], where
        assert row["messages"] == row["chosen"], where
        assert type(row["score_chosen"]) is float and type(row["score_rejected"]) is float, where
        assert row["score_chosen"] >= row["score_rejected"], where
    assert sum(r["score_chosen"] == r["score_rejected"] for _, r in located) >= 4


def _hh_final_start(text):
    return text.rfind("\n\nAssistant:")


def test_hh_rlhf_layout_and_quirks():
    located = _rows("hh_rlhf.jsonl", ["chosen", "rejected", "subset"], at_least=48)
    rows = [row for _, row in located]
    assert {r["subset"] for r in rows} == HH_SUBSETS
    for where, row in located:
        assert all(isinstance(v, str) for v in row.values()), where
        c, r = row["chosen"], row["rejected"]
        assert c.startswith(("\n\nHuman: ", "Human: ")), where
        shared = c[: _hh_final_start(c)]
        assert shared == r[: _hh_final_start(r)], f"{where}: chosen and rejected differ before the last turn"
    finals = [(r["chosen"], r["rejected"]) for r in rows]
    bare = sum(any(t.endswith("\n\nAssistant:") for t in pair) for pair in finals)
    spaced = sum(any(t.endswith("\n\nAssistant: ") for t in pair) for pair in finals)
    assert bare >= 3 and spaced >= 3 and bare + spaced >= 6
    assert sum(c == r for c, r in finals) >= 3
    assert sum(not c.startswith("\n\n") for c, _ in finals) >= 2
    turns = [len(re.findall(r"(?:^|\n\n)Human: ", c)) for c, _ in finals]
    assert max(turns) >= 6 and sum(t >= 3 for t in turns) >= 5
    assert any(re.search(r"[^\n]Human:", c[1:]) for c, _ in finals), 'no "Human:" mid-sentence'


def test_orca_dpo_pairs_schema():
    located = _rows("orca_dpo_pairs.jsonl", ORCA_KEYS, at_least=24)
    for where, row in located:
        assert all(isinstance(v, str) for v in row.values()), where
        assert row["question"] and row["chosen"] and row["rejected"], where
    assert 0.35 <= sum(r["system"] == "" for _, r in located) / len(located) <= 0.65


def test_argilla_dpo_mix_schema():
    located = _rows("argilla_dpo_mix.jsonl", MIX_KEYS, at_least=24)
    rows = [row for _, row in located]
    for where, row in located:
        assert row["dataset"] in MIX_SOURCES, where
        for side in ("chosen", "rejected"):
            _alternates(_messages(row[side], where), where)
        assert row["chosen"][:-1] == row["rejected"][:-1] and row["chosen"][-1] != row["rejected"][-1], where
        assert type(row["chosen_rating"]) is float and type(row["rejected_rating"]) is float, where
    assert {r["dataset"] for r in rows} == MIX_SOURCES
    assert sum(len(r["chosen"]) > 3 for r in rows) >= 5
    assert any(r["chosen"][0]["role"] == "system" for r in rows)


def test_capybara_argilla_schema():
    located = _rows("capybara_argilla.jsonl", CAPY_KEYS, at_least=16)
    rows = [row for _, row in located]
    for where, row in located:
        roles = _messages(row["chosen"], where)
        _alternates(roles, where)
        _messages(row["rejected"], where)
        assert row["chosen"][:-1] == row["rejected"][:-1], where
        users = [m["content"] for m in row["chosen"] if m["role"] == "user"]
        assert [t["input"] for t in row["conversation"]] == users and row["prompt"] == users[0], where
        assert all(list(t) == ["input", "output"] for t in row["conversation"]), where
        assert row["conversation"][-1]["output"] == row["original_response"], where
        generations = [row["chosen"][-1]["content"], row["rejected"][-1]["content"]]
        assert set(generations) - {row["original_response"]} <= set(row["new_generations"]), where
        sizes = {len(row[k]) for k in ("generation_prompt", "new_generations", "raw_generation_responses")}
        assert len(sizes) == 1, where
        assert type(row["rating_chosen"]) is int and type(row["rating_rejected"]) is int, where
        assert 1 <= row["rating_rejected"] < row["rating_chosen"] <= 5, where
    assert sum(len(r["conversation"]) >= 2 for r in rows) >= 8


def test_stack_exchange_lengths():
    located = _rows("stack_exchange.json", ["question", "response_j", "response_k"], at_least=25)
    rows = [row for _, row in located]
    for where, row in located:
        assert all(isinstance(v, str) and v for v in row.values()), where
    longest = sorted(len(r["response_j"]) for r in rows)
    assert sum(n > 6000 for n in longest) >= 4
    assert sum(10_000 <= n <= 14_000 for n in longest) >= 2
    assert sum("```" in r["response_j"] for r in rows) >= 20


def _all_text():
    texts = []

    def walk(value):
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    for path in sorted([*PAIRS.glob("*.json"), *PAIRS.glob("*.jsonl")]):
        walk(pairs_rows(path.name))
    return texts


TEXT = "\n\x00\n".join(_all_text())
# (name, regex) pairs: every one must occur somewhere in the files.
FEATURES = [
    ("contraction 's", r"[a-z]'s\b"), ("contraction n't", r"n't\b"), ("contraction 're", r"'re\b"),
    ("contraction 've", r"'ve\b"), ("contraction 'm", r"I'm\b"), ("contraction 'll", r"'ll\b"),
    ("contraction 'd", r"[a-z]'d\b"), ("uppercase 'S", r"[A-Z]'S\b"), ("uppercase 'T", r"N'T\b"),
    ("curly apostrophe", r"[a-z]’[a-z]"), ("run of 3+ spaces", r"\S {3,}\S"), ("tab", r"\t"),
    ("CRLF", r"\r\n"), ("trailing space at line end", r"[^ \n] +\n"), ("line of only spaces", r"\n +\n"),
    ("3+ blank lines", r"\n{4,}"), ("15+ digit run", r"\d{15,}"), ("decimal", r"\d\.\d"),
    ("1,000,000", r"1,000,000"), ("10⁶", r"10⁶"), ("ZWJ emoji 👩‍💻", "👩\u200d💻"), ("skin tone 👍🏽", "👍🏽"),
    ("flag ZWJ 🏳️‍🌈", "🏳\ufe0f\u200d🌈"), ("café", "café"), ("naïve", "naïve"), ("Ærøskøbing", "Ærøskøbing"),
    ("ß", "ß"), ("Turkish İ", "İ"), ("Turkish ı", "ı"), ("Cyrillic", r"[\u0400-\u04ff]{3}"),
    ("Greek", r"[\u0370-\u03ff]{3}"), ("Arabic", r"[\u0600-\u06ff]{3}"), ("Hebrew", r"[\u0590-\u05ff]{3}"),
    ("Devanagari", r"[\u0900-\u097f]{3}"), ("Thai", r"[\u0e00-\u0e7f]{3}"), ("hiragana", r"[\u3040-\u309f]{2}"),
    ("katakana", r"[\u30a0-\u30ff]{2}"), ("kanji", r"[\u4e00-\u9fff]{2}"), ("Hangul", r"[\uac00-\ud7af]{2}"),
    ("combining acute", "e\u0301"), ("NBSP", "\u00a0"), ("zero-width space", "\u200b"), ("soft hyphen", "\u00ad"),
    ("full-width forms", r"[\uff01-\uff5e]"), ("ideographic space", "\u3000"), ("LaTeX", r"\\frac\{"),
    ("math symbols", r"[√≈≠≤∞π×]"), ("Python code", "```python"), ("JavaScript code", "```js"),
    ("Rust code", "```rust"), ("SQL code", "```sql"), ("shell code", "```bash"), ("JSON", "```json"),
    ("YAML", "```yaml"), ("tab-indented code", r"\n\t+\S"), ("4-space indent", r"\n    \S"),
    ("markdown table", r"\n\|[^\n]*\|\n\|[-: |]+\|"), ("bullet list", r"\n- \S"), ("URL", r"https://\S+"),
    ("e-mail address", r"[\w.+-]+@[\w-]+\.[a-z]{2,}"), ("<|im_start|>", r"<\|im_start\|>"),
    ("<|im_end|>", r"<\|im_end\|>"), ("<|endoftext|>", r"<\|endoftext\|>"), ("[INST]", r"\[INST\]"),
    ("<s>", r"<s>"), ("</s>", r"</s>"),
]


@pytest.mark.parametrize("name,pattern", FEATURES, ids=[name for name, _ in FEATURES])
def test_text_holds_pretokenizer_edge_case(name, pattern):
    assert re.search(pattern, TEXT), f"no {name} anywhere in tests/assets/pairs"


def test_values_with_leading_or_trailing_whitespace_exist():
    values = [t["value"] for r in pairs_rows("sharegpt_en.json") for t in r["conversations"]]
    assert any(v != v.strip() and v.strip() for v in values)


@pytest.mark.parametrize("name", sorted(p.name for p in PAIRS.glob("*.jsonl")))
def test_jsonl_lines_survive_splitlines(name):
    """U+2028/U+2029/U+0085 would make str.splitlines() cut a row in two."""
    text = (PAIRS / name).read_text(encoding="utf-8")
    assert text.splitlines() == text.rstrip("\n").split("\n")


def test_readme_row_counts_match_the_files():
    readme = (PAIRS / "README.md").read_text(encoding="utf-8")
    for path in sorted([*PAIRS.glob("*.json"), *PAIRS.glob("*.jsonl")]):
        rows = pairs_rows(path.name)
        match = re.search(rf"^\| `{re.escape(path.name)}` \| (\d+) ", readme, re.M)
        assert match, f"README.md has no table row for {path.name}"
        said = int(match.group(1))
        assert said == len(rows), f"README.md says {said} rows for {path.name}, the file has {len(rows)}"
