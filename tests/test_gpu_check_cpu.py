"""`python -m benchmarks.gpu_check --device cpu --quick --sections 1,3`: the GPU check's code paths on CPU.

Section 1 compares every float32 layout / attention / chunking variant and TRL's own loss path with
the padded sdpa reference (the negative control, a mask that lets rejected tokens see the chosen
ones, must fail the bar); section 3 compares TRL's full-logits loss with our chunked one. Timings
and memory are not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_gpu_check_quick_on_cpu(tmp_path):
    pytest.importorskip("trl", reason="section 1 compares against TRL's ORPOTrainer (installed by make test)")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--quick",
                           "--sections", "1,3", "--out", str(tmp_path), "--budget-s", "300"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=880)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["env"]["device"] == "cpu"
    s1 = report["section1"]
    float32 = [v for v in s1["variants"] if v.get("dtype") == "float32" and not v["name"].startswith("diagnostic")]
    assert len(float32) == 7, [v["name"] for v in float32]
    for v in float32:
        assert "error" not in v and "skipped" not in v, v
        if v.get("leak"):
            assert v["pass"] is False and v["as_expected"] is True, v
        else:
            assert v["pass"] is True, v
    assert any(v.get("leak") for v in float32)
    assert s1["all_float32_pass"] is True and s1["float32_not_run"] == []

    s3 = report["section3"]
    chunk = s3["setup"]["chunk_size"]
    for side in ("trl_full_logits", f"ours_chunked_{chunk}"):
        assert "loss" in s3[side], (side, s3[side])
    assert s3["loss_rel_diff"] < 1e-5, s3
    # the only error allowed: a flex variant's dynamic-shape compile, which the script retries with static shapes
    assert all("dynamic-shape flex compile" in e["where"] for e in report["errors"]), [e["where"] for e in report["errors"]]

    text = (tmp_path / "gpu_check.md").read_text()
    assert "All float32 variants as expected: True" in text
