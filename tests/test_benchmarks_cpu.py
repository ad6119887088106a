"""The benchmark harness and the GPU check, run on CPU in this process: the code paths the GPU script runs.

- ``python -m benchmarks train --smoke --isolation inline``: TRL's trainer, TRL + Liger's fused ORPO
  loss, ours (defaults and speed features off) and the causal-LM limit each train 1 warm-up + 2 timed
  steps and are measured; LoRA too. Speeds are machine- and load-dependent, so only that each
  produced sane numbers is checked, and the processed/unique ratios each layout implies.
- ``python -m benchmarks gpu-check --device cpu --quick --equivalence --trainer``: every float32
  layout / attention / chunking variant and TRL's own loss path match the padded reference (the
  negative control, a mask that lets rejected tokens see the chosen ones, must fail); ``train()`` with
  logging every step, ``evaluate()``, ``save_model()`` and a resume from step 2 with identical losses,
  for a full fine-tune and LoRA.
- ``python -m benchmarks loss-memory`` (what ``device_run.sh`` runs on the card after the GPU check):
  every side's loss, each in a fresh process, is TRL's.
- ``python -m benchmarks preprocess-scale`` at 20 and 40 generated conversational pairs, every path
  (``prepare_preference_dataset``, TRL's trainer's own preprocessing, Axolotl's ``load_orpo_datasets``),
  each in its own process: every run tokenised every row and recorded its time, CPU time and peak RSS,
  ours against TRL's; a smaller file is a prefix of a larger one and the generated text keeps adding new
  words.
- ``benchmarks/results``, ``README.md`` and ``benchmarks/README.md`` hold no absolute path.

The Axolotl CLI runs of the harness (about a minute each on 2 cores) are not repeated here:
``tests/test_axolotl_e2e.py`` drives the same ``axolotl train`` with the plugin.
"""

from __future__ import annotations

import json
import math

import pytest

from testkit import REPO

pytestmark = pytest.mark.slow

PYTHON_IMPLS = ("trl", "trl_liger", "merlina", "merlina_nospeed", "causal_lm")


def _finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_harness_measures_every_python_implementation_full_and_lora(tmp_path):
    from benchmarks.__main__ import main

    assert main(["train", "--smoke", "--isolation", "inline", "--shapes", "long-prompt", "--tunes", "full", "lora",
                     "--impls", *PYTHON_IMPLS, "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*-smoke.json")
    report = json.loads(path.read_text())
    assert report["environment"]["versions"]["trl"] and report["settings"]["command"].startswith("python -m benchmarks train")
    groups = {g["tune"]: g["impls"] for g in report["groups"]}
    assert set(groups) == {"full", "lora"}
    for tune, impls in groups.items():
        assert set(impls) == set(PYTHON_IMPLS)
        for name in PYTHON_IMPLS:
            result, m = impls[name]["result"], impls[name]["metrics"]
            assert "error" not in result and "skipped" not in result, (tune, name, result)
            assert result["timed_steps"] == 2, (tune, name)
            for key in ("pairs_per_s", "tokens_per_s", "peak_gib", "step_s_median"):
                assert _finite_positive(m[key]), (tune, name, key, m)
            assert m["step_s_min"] <= m["step_s_median"] <= m["step_s_max"]
            assert m["processed_unique_ratio"] >= 1.0 - 1e-9, (tune, name, m)
            assert _finite_positive(m["speed_vs_trl"]) and _finite_positive(m["of_limit"])
        # TRL pads chosen and rejected rows to one width and repeats the prompt; ours shares and packs
        for padded in ("trl", "trl_liger", "merlina_nospeed"):
            assert impls[padded]["metrics"]["processed_unique_ratio"] > 1.3
        assert impls["merlina"]["metrics"]["processed_unique_ratio"] < 1.1
        assert impls["trl"]["metrics"]["speed_vs_trl"] == 1.0 and impls["causal_lm"]["metrics"]["of_limit"] == 1.0
        # one pair's unique tokens per causal-LM row: the same count as ours
        unique = {n: sum(impls[n]["result"]["tokens"]["unique_per_batch"]) for n in ("merlina", "causal_lm")}
        assert unique["merlina"] == unique["causal_lm"], unique
    assert groups["lora"]["merlina"]["result"]["trainer"]["trainable_params"] < \
        groups["full"]["merlina"]["result"]["trainer"]["trainable_params"] / 10
    text = path.with_suffix(".md").read_text()
    assert "| TRL + Liger `LigerFusedLinearORPOLoss` |" in text and "of limit" in text


def test_gpu_check_quick_on_cpu(tmp_path):
    from benchmarks.__main__ import main

    assert main(["gpu-check", "--device", "cpu", "--quick", "--equivalence", "--trainer",
                 "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*-gpu-check-quick.json")
    report = json.loads(path.read_text())

    s1 = report["section1"]
    float32 = [v for v in s1["variants"] if v.get("dtype") == "float32"]
    assert len(float32) == 7, [v["name"] for v in float32]
    for v in float32:
        assert "error" not in v and "skipped" not in v, v
        assert (v["pass"] is False and v["as_expected"] is True) if v.get("leak") else v["pass"] is True, v
    assert any(v.get("leak") for v in float32)
    assert s1["all_float32_pass"] is True and s1["float32_not_run"] == []

    trainer = report["trainer"]
    assert set(trainer["tunes"]) == {"full", "lora"}
    for tune, r in trainer["tunes"].items():
        assert r["passed"], (tune, r.get("problems"), r.get("error"))
        assert r["logged_steps"] == [1, 2, 3, 4] and r["resume_max_rel_diff"] == 0.0
        assert {"nll_loss", "rewards/accuracies"} <= set(r["log_keys"]) and "eval_loss" in r["eval"]
        assert r["speed_plan"]["prefix_sharing"] and r["speed_plan"]["padding_free"]
    assert trainer["all_passed"] is True
    # the only error allowed: a flex variant's dynamic-shape compile, which the script retries with static shapes
    assert all("dynamic-shape flex compile" in e["where"] for e in report["errors"]), [e["where"] for e in report["errors"]]
    text = path.with_suffix(".md").read_text()
    assert "All float32 variants as expected: True" in text and "All trainer checks passed: True" in text


def test_preprocess_scale_generates_a_growing_vocabulary(tmp_path):
    from itertools import islice

    from benchmarks.preprocess import generate_rows, write_files

    paths = write_files(tmp_path, "text", [5, 200], seed=1)
    assert paths[200].read_text().startswith(paths[5].read_text())
    words = [set(" ".join(r.values()).split()) for r in islice(generate_rows("text", 1), 400)]
    assert len(set().union(*words[200:]) - set().union(*words[:200])) > 100  # new words keep coming


def _preprocess_scale(tmp_path, *paths: str) -> dict:
    """`preprocess-scale` at 20 and 40 pairs: every path and size a run with every figure, and its table row."""
    from benchmarks.__main__ import main

    assert main(["preprocess-scale", "--sizes", "20", "40", "--layouts", "messages", "--paths", *paths,
                 "--parallel", "2", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("*-preprocess-scale.json")
    report = json.loads(result.read_text())
    assert report["command"].startswith("python -m benchmarks preprocess-scale")
    assert set(report["runs"]) == {f"messages/{path}" for path in paths}
    for key, group in report["runs"].items():
        for size, run in group["sizes"].items():
            assert run["rows"] == int(size), (key, size, run)
            for field in ("pairs_per_s", "cpu_us_per_pair", "peak_rss_mib", "anon_peak_mib", "file_peak_mib"):
                assert run[field] > 0, (key, size, field, run)
        check = group["check"]
        assert 0.5 < check["peak_rss_ratio_largest_to_smallest"] < 5, check  # 20 vs 40 pairs: about 1
    text = result.with_suffix(".md").read_text()
    assert all(f"| messages | {path} | 40 |" in text for path in paths), text
    return report["runs"]


def test_preprocess_scale_runs_the_python_api_and_trls_path_in_fresh_processes(tmp_path):
    runs = _preprocess_scale(tmp_path, "api", "trl")
    for size in ("20", "40"):  # ours against TRL's run of the same size, not the other one
        trl, ours = runs["messages/trl"]["sizes"][size], runs["messages/api"]["sizes"][size]
        assert ours["cpu_speed_vs_trl"] == round(trl["cpu_us_per_pair"] / ours["cpu_us_per_pair"], 2), (ours, trl)
        assert ours["peak_rss_vs_trl"] == round(ours["peak_rss_mib"] / trl["peak_rss_mib"], 2), (ours, trl)


@pytest.mark.needs("axolotl")  # `load_orpo_datasets` with Axolotl's `load_cfg`
def test_preprocess_scale_runs_the_axolotl_path_in_fresh_processes(tmp_path):
    _preprocess_scale(tmp_path, "axolotl")


def test_result_files_and_readmes_hold_no_absolute_path():
    from benchmarks.report import ABSOLUTE_PATH

    files = sorted((REPO / "benchmarks" / "results").glob("*")) + [REPO / "README.md", REPO / "benchmarks" / "README.md"]
    assert len(files) > 1
    found = [f"{f.name}:{n}: {m.group(0)}" for f in files for n, line in enumerate(f.read_text().splitlines(), 1)
             for m in [ABSOLUTE_PATH.search(line)] if m]
    assert not found, "\n".join(found[:20])


def test_loss_memory_every_side_has_trls_loss(tmp_path):
    """`loss-memory` at vocab 512, 4 rows x 32 tokens, chunks of 16: each side in a fresh process, every loss TRL's."""
    from benchmarks.__main__ import main

    assert main(["loss-memory", "--vocab", "512", "--tokens", "32", "--hidden", "32", "--chunk-size", "16",
                 "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*-loss-memory.json")
    sides = json.loads(path.read_text())["sides"]
    assert list(sides) == ["trl", "ours", "ours-fused", "ours-full"], sides
    for side, r in sides.items():
        assert abs(r["loss"] - sides["trl"]["loss"]) < 1e-5, (side, r)
        assert {"seconds", "peak_delta_bytes", "grad_norm_hidden"} <= set(r), (side, r)
    assert "| ours, chunked (16 tokens) |" in path.with_suffix(".md").read_text()
