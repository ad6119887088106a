"""`python -m benchmarks.run --smoke`: every implementation runs and is measured (no timing asserted).

The smoke run trains a 2-layer Llama for 1 warm-up + 2 timed steps through Axolotl's `rl: orpo`,
Axolotl's `rl: orpo_standalone` (the real `axolotl train` CLI), TRL's ORPOTrainer, ours, and ours
with the speed features off, each in its own process. Speeds are machine- and load-dependent, so
only that each produced sane numbers is checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO, shared_path

pytestmark = pytest.mark.slow

ALL_IMPLS = ("axolotl_orpo", "axolotl_merlina", "trl", "merlina", "merlina_nospeed")


@pytest.mark.timeout(900)
def test_smoke_benchmark_measures_every_implementation(tmp_path):
    for parts in (("tokenizers", "smollm2"), ("ultrafeedback-h4-sample", "dummy_dpo.jsonl"),
                  ("llamafactory-dpo-demo", "dpo_en_demo.json")):
        shared_path(*parts)
    pytest.importorskip("axolotl", reason="the smoke benchmark drives the axolotl CLI (installed by make test)")
    pytest.importorskip("trl", reason="the smoke benchmark compares against TRL (installed by make test)")

    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               WANDB_MODE="disabled", AXOLOTL_DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=880)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"

    (report_json,) = tmp_path.glob("*-smoke.json")
    (table,) = tmp_path.glob("*-smoke.md")
    report = json.loads(report_json.read_text())
    (group,) = report["groups"]
    assert set(group["impls"]) == set(ALL_IMPLS)
    for name in ALL_IMPLS:
        entry = group["impls"][name]
        assert "error" not in entry["result"] and "skipped" not in entry["result"], (name, entry["result"])
        m = entry["metrics"]
        assert math.isfinite(m["pairs_per_s"]) and m["pairs_per_s"] > 0, (name, m)
        assert math.isfinite(m["tokens_per_s"]) and m["tokens_per_s"] > 0, (name, m)
        assert math.isfinite(m["peak_mib"]) and m["peak_mib"] > 0, (name, m)
        assert entry["result"]["timed_steps"] == 2
        assert m["processed_unique_ratio"] >= 1.0 - 1e-9, (name, m)
    # TRL pads chosen and rejected rows to one width and repeats the prompt: more than the unique tokens
    for padded in ("trl", "axolotl_orpo", "merlina_nospeed"):
        assert group["impls"][padded]["metrics"]["processed_unique_ratio"] > 1.3
    for shared in ("merlina", "axolotl_merlina"):
        assert group["impls"][shared]["metrics"]["processed_unique_ratio"] < 1.1
    text = table.read_text()
    assert "| impl |" in text and "(a) Axolotl `rl: orpo`" in text
    assert str(table) in proc.stdout
