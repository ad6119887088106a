"""`axolotl orpo-preview`: its pure rendering / statistics functions, then the real command.

The pure functions are checked against hand-written token ids of the real SmolLM2 tokenizer (each
row's text in a comment) and hand-computed nearest-rank percentiles; the command's refusals run
in-process through click; one test drives the installed `axolotl` CLI in subprocesses on a tiny
local model with the project's ShareGPT file (tests/assets/pairs) plus a file with one bad row.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from click.testing import CliRunner

from merlina_orpo_plugin.data import PreferenceDataStats
from merlina_orpo_plugin.integration.cli import _check_config_file, _loaded_for_every_config, orpo_preview
from merlina_orpo_plugin.integration.preview import (
    format_counts,
    format_pair,
    format_segment,
    length_table,
    pair_lengths,
    percentile,
    shorten,
)
from testkit import pairs_path, pairs_rows

# "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n": a prompt rendered with
# the generation prompt, as the ORPO tokeniser cuts it off the full conversation.
PROMPT = [1, 4093, 198, 39832, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
CHOSEN = [38634, 30, 2, 198]  # "Paris.<|im_end|>\n"
REJECTED = [60, 25962, 30, 2, 198]  # "Lyon.<|im_end|>\n"


def test_pair_marks_the_boundary_and_shows_the_ids_on_both_sides(tokenizer):
    text = format_pair(PROMPT, CHOSEN, REJECTED, tokenizer, edge=4)
    assert text == (
        "──── prompt (13 tokens) ────\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
        "  first 4 ids: 1 '<|im_start|>', 4093 'user', 198 '\\n', 39832 'Capital'\n"
        "  last 4 ids:  1 '<|im_start|>', 520 'ass', 9531 'istant', 198 '\\n'\n"
        "──── chosen (4 tokens) ────\n"
        "Paris.<|im_end|>\n"
        "  ids: 38634 'Paris', 30 '.', 2 '<|im_end|>', 198 '\\n'\n"
        "──── rejected (5 tokens) ────\n"
        "Lyon.<|im_end|>\n"
        "  ids: 60 'L', 25962 'yon', 30 '.', 2 '<|im_end|>', 198 '\\n'"
    )


def test_template_mistakes_are_visible_at_the_boundary(tokenizer):
    # No generation prompt: the prompt stops after the user turn and the completion carries the
    # assistant header, so the loss would be spent on "<|im_start|>assistant\n".
    no_generation_prompt = format_segment("chosen", [1, 520, 9531, 198, 38634, 30, 2, 198], tokenizer, edge=2)
    assert "  first 2 ids: 1 '<|im_start|>', 520 'ass'" in no_generation_prompt
    # A template that already ends the answer plus an added EOS: two end tokens.
    double_end = format_segment("chosen", [1589, 314, 7042, 30, 2, 2], tokenizer, edge=2)  # "It is Paris."
    assert double_end.splitlines()[1] == "It is Paris.<|im_end|><|im_end|>"
    assert "  last 2 ids:  2 '<|im_end|>', 2 '<|im_end|>'" in double_end


def test_long_text_is_cut_in_the_middle_keeping_both_ends():
    text = "A" * 50 + "B" * 100 + "C" * 50
    short = shorten(text, 100)
    assert short == "A" * 50 + " […100 chars…] " + "C" * 50
    assert shorten("short", 100) == "short"


def test_nearest_rank_percentiles():
    values = list(range(100, 0, -1))  # 1..100, unsorted: p = the p-th smallest value
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 50) == 7
    # 4 values: p50 -> rank ceil(2.0) = 2 -> 20; p90 -> rank ceil(3.6) = 4 -> 40
    assert percentile([40, 10, 30, 20], 50) == 20 and percentile([40, 10, 30, 20], 90) == 40
    with pytest.raises(ValueError, match="percentile of no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"`q` must be in \(0, 100\], got 0"):
        percentile([1], 0)


def test_length_table_has_a_row_per_column_and_sequence_is_prompt_plus_longer_answer():
    lengths = pair_lengths(prompt=[10, 20], chosen=[5, 1], rejected=[3, 8])
    assert lengths["sequence"] == [15, 28]
    assert length_table({**lengths, "empty": []}).splitlines() == [
        "  tokens       p50     p90     p99     max",
        "  prompt        10      20      20      20",
        "  chosen         1       5       5       5",
        "  rejected       3       8       8       8",
        "  sequence      15      28      28      28",
        "  empty          -       -       -       -",
    ]


def test_counts_name_the_refused_rows_and_what_training_would_do():
    stats = PreferenceDataStats("conversational", pairs=8, truncated_pairs=3, prompt_truncated=1,
                                completion_truncated=2, empty_completions=2, identical_pairs=1, max_prompt_tokens=9,
                                max_completion_tokens=9, max_sequence_tokens=18)
    bad = [(2, "`rejected` is None"), (5, "`chosen` must be a string, got int")]
    stops = format_counts(stats, refused=4, skip_bad_rows=False, bad_rows=bad)
    assert stops.splitlines() == [
        "  pairs: 8",
        "  refused: 4 (training stops at the first; fix them or set `merlina_skip_bad_rows: true`)",
        "    row 2: `rejected` is None",
        "    row 5: `chosen` must be a string, got int",
        "    … and 2 more",
        "  truncated: 3 (prompt cut: 1, completion cut: 2)",
        "  empty completions: 2 (each trains its end token alone)",
        "  identical chosen and rejected: 1 (they teach no preference)",
    ]
    assert "refused: 4 (skipped: `merlina_skip_bad_rows: true`)" in format_counts(stats, refused=4, skip_bad_rows=True)
    assert "refused: 0\n" in format_counts(stats, refused=0, skip_bad_rows=False)
    none = replace(stats, empty_completions=0, identical_pairs=0)
    assert format_counts(none, refused=0, skip_bad_rows=False).splitlines()[-2:] == [
        "  empty completions: 0", "  identical chosen and rejected: 0"]


@pytest.mark.parametrize(
    "config, message",
    [
        (None, r"missing\.yml: no such config file"),
        ({"plugins": ["merlina_orpo_plugin.MerlinaORPOPlugin"], "rl": "dpo"},
         r"is not an `rl: orpo_standalone` config \(`rl` is 'dpo'\)"),
    ],
)
def test_missing_or_non_orpo_config_is_refused_in_one_line_before_axolotl_loads(tmp_path, config, message):
    path = tmp_path / "missing.yml"
    if config is not None:
        path = tmp_path / "config.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
    result = CliRunner().invoke(orpo_preview, [str(path)])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and re.search(message, result.output), result.output


def test_a_config_that_does_not_load_the_plugin_is_refused_where_axolotl_would_not_load_it(tmp_path):
    """Axolotl 0.19 loads only what `plugins:` lists; 0.21 also loads the installed `axolotl.plugins` entry
    point, so there `rl: orpo_standalone` alone is an ORPO config and passes this check."""
    path = tmp_path / "config.yml"
    path.write_text(json.dumps({"rl": "orpo_standalone"}))
    if _loaded_for_every_config():
        assert _check_config_file(str(path)) is None
        return
    result = CliRunner().invoke(orpo_preview, [str(path)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert re.search(r"\(`plugins:` does not list the plugin\).*merlina_orpo_plugin\.MerlinaORPOPlugin", result.output)


def test_a_config_without_rl_is_refused_with_what_to_set(tmp_path):
    from e2e_helpers import write_config

    entry = {"path": str(pairs_path("sharegpt_en.json")), "ds_type": "json", "type": "sharegpt"}
    config = write_config(tmp_path, tmp_path / "model", [entry], rl=None)  # the model is never read
    result = CliRunner().invoke(orpo_preview, [str(config)])
    assert result.exit_code == 1
    plugins = "" if _loaded_for_every_config() else " and `plugins: [merlina_orpo_plugin.MerlinaORPOPlugin]`"
    assert result.output == (
        f"Error: {config} is not an `rl: orpo_standalone` config (`rl` is None); orpo-preview needs "
        f"`rl: orpo_standalone`{plugins}\n"
    )


@pytest.mark.needs("axolotl")
@pytest.mark.slow
def test_real_cli_lists_the_command_and_previews_pairs_with_a_bad_row(tmp_path, tiny_llama_dir):
    from e2e_helpers import CliRun, write_config

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "2+2=", "chosen": "4"}) + "\n"  # no `rejected`: refused
                   + json.dumps({"prompt": "3+3=", "chosen": "6", "rejected": ""}) + "\n"  # empty: legal, counted
                   + json.dumps({"prompt": "4+4=", "chosen": "8", "rejected": "9"}) + "\n")
    entries = [{"path": str(pairs_path("sharegpt_en.json")), "ds_type": "json", "type": "sharegpt"},
               {"path": str(bad), "ds_type": "json", "type": "prompt_pairs"}]
    orpo = write_config(tmp_path, tiny_llama_dir, entries, sequence_len=1024)

    # Two CLI runs side by side: each spends most of its time importing Axolotl.
    listing = CliRun(["axolotl", "--help"], cwd=tmp_path, timeout=300)
    preview = CliRun(["axolotl", "orpo-preview", str(orpo), "--rows", "2"], cwd=tmp_path, timeout=300).result()
    listing = listing.result()
    assert re.search(r"^\s+orpo-preview\s", listing.stdout, re.M), listing.stdout

    text = preview.stdout
    sharegpt, bad_file = text.split("════ datasets[1]:")
    assert "── pair 1 ──" in sharegpt and "── pair 2 ──" not in sharegpt
    # The prompt ends with the generation prompt; the completion starts right after it and ends
    # with the template's end of turn.
    assert re.search(r"<\|im_start\|>assistant\n  first 4 ids: .*\n  last 4 ids:  1 '<\|im_start\|>', 520 'ass', "
                     r"9531 'istant', 198 '\\n'\n──── chosen \(\d+ tokens\) ────\n", sharegpt), sharegpt[:3000]
    assert re.search(r"<\|im_end\|>\n  first 4 ids: .*\n  last 4 ids:  .*, 2 '<\|im_end\|>', 198 '\\n'\n"
                     r"──── rejected", sharegpt), sharegpt[:3000]
    assert "refused: 0" in sharegpt and f"pairs: {len(pairs_rows('sharegpt_en.json'))}" in sharegpt
    assert re.search(r"^  refused: 1 \(training stops at the first.*\n    row 0: `rejected` is None$",
                     bad_file, re.M), bad_file
    assert "pairs: 2" in bad_file and "empty completions: 1 (each trains its end token alone)" in bad_file
    assert "empty completions: 0" in sharegpt
    for section in (sharegpt, bad_file):
        assert re.search(r"^  tokens\s+p50\s+p90\s+p99\s+max\n  prompt(\s+\d+){4}\n", section, re.M), section[-1500:]
        assert re.search(r"^  sequence(\s+\d+){4}$", section, re.M)
    assert "[axolotl.cli.config] config:" not in text  # Axolotl's config dump is kept off the console
