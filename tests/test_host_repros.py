"""Failures of the host, not of this package, shown without it: what the suite's test setup works around.

Axolotl's CUDA peer-to-peer check (tests/host_repros/axolotl_p2p_check.py) raises on a CUDA build of
torch without a GPU, which kills every 2-process CPU run through Axolotl; with a CPU build it passes.
The suite's launcher for those runs (tests/cpu_launch.py) makes the question answerable ("no peer
access": False), and changes nothing where a GPU exists.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from testkit import REPO

pytestmark = pytest.mark.needs("axolotl")
SCRIPT = REPO / "tests" / "host_repros" / "axolotl_p2p_check.py"


def _check(*flags: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, check=True,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin", "HOME": str(REPO)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_axolotls_p2p_check_crashes_exactly_on_a_cuda_build_without_a_gpu():
    report = _check()
    assert report["cuda_build"] == (torch.version.cuda is not None) and report["gpu"] is False
    if report["cuda_build"]:
        assert report.get("raised", "").startswith("RuntimeError: Found no NVIDIA driver"), report
    else:  # torch's "not compiled with CUDA" AssertionError is the one Axolotl catches
        assert report == {**report, "answer": True} and "raised" not in report, report


def test_the_suites_cpu_launcher_makes_the_check_answer_no_peer_access():
    assert _check("--with-cpu-launch") == {**_check("--with-cpu-launch"), "answer": False}
