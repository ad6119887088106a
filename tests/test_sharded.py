"""Sharded training with the chunked loss on: 2 CPU processes (torchrun, gloo) = 1 process.

One torchrun runs every sharded case of `sharded_run.py` one after the other: FSDP2 as accelerate
applies it (units per decoder layer and the root; from accelerate 1.15 also the embeddings, and the
final norm with the LM head as one unit; in `head_unit` every Linear, the LM head included, is its
own unit; in `grouped` the norm and the head are one unit resharded after forward, whatever the
accelerate) and DeepSpeed ZeRO-3 (every weight partitioned). Each case trains 3
steps of 4 pairs (2 per rank) with 8-token loss chunks, a different number of chunks on each
rank, then evaluates; the 1-process reference runs here meanwhile. Losses, gradient norms,
ORPO metrics and evaluation must agree within 1e-5 relative, with chunking still on; the
evaluation's generations are sampled on both ranks in step (no hang) and written once, for the
same eval prompts as in one process. Without
`compute.head.whole_head` FSDP2 fails at the first head call, or, where the head is a unit, both ranks
die of a SIGSEGV in backward (the unit's hooks reshard it before the norm's backward); without
`compute.head.equal_chunk_count` ZeRO-3 fails on mismatched collectives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from testkit import REPO

import sharded_run  # tests/ is on sys.path, as for conftest

RUNS = ["fsdp2:full", "fsdp2:lora", "fsdp2:tied", "fsdp2:head_unit", "fsdp2:grouped",
        "zero3:full", "zero3:lora", "zero3:tied"]
EXPECTED = {  # what each sharding must have done to the model, so a silent fallback to DDP fails
    "fsdp2": ("DistributedType.FSDP", "FSDP"),
    "zero3": ("DistributedType.DEEPSPEED", "DeepSpeedEngine"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(sharded results, 1-process results)``: torchrun in the background, the reference here."""
    directory = tmp_path_factory.mktemp("sharded")
    out = directory / "runs.json"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "sharded_run.py"), "--out", str(out), *RUNS]
    log = (directory / "torchrun.log").open("w+")
    # its own process group, so a hung run's ranks are ended with the launcher
    process = subprocess.Popen(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        reference = {}
        for case in ("full", "lora", "tied"):
            with tempfile.TemporaryDirectory() as output_dir:
                reference[case] = sharded_run.train(case, "none", 1, output_dir)
        returncode = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log.seek(0)
    assert returncode == 0, f"torchrun failed ({returncode}); its output ends with:\n{log.read()[-6000:]}"
    return json.loads(out.read_text()), reference


@pytest.mark.parametrize("run", RUNS)
def test_two_sharded_processes_train_as_one_with_the_chunked_loss(runs, run):
    sharded, reference = runs
    shard, case = run.split(":")
    got, expected = sharded[run], reference[sharded_run.REFERENCE.get(case, case)]
    distributed_type, wrapper = EXPECTED[shard]
    assert got["sharding"] == distributed_type and got["wrapped"].startswith(wrapper), got
    if case in ("head_unit", "grouped"):
        assert got["head"] == "FSDPLinear", got  # the head really is an FSDP unit
    assert got["loss_chunk_size"] == expected["loss_chunk_size"] == sharded_run.CHUNK, got["fallbacks"]
    assert len(got["logs"]) == len(expected["logs"]) == sharded_run.STEPS
    for step, (mine, theirs) in enumerate(zip(got["logs"], expected["logs"]), start=1):
        for name in sharded_run.LOGGED:
            assert mine[name] == pytest.approx(theirs[name], rel=1e-5), f"step {step} {name}"
    for name in sharded_run.EVALUATED:
        assert got["eval"][name] == pytest.approx(expected["eval"][name], rel=1e-5), name


@pytest.mark.parametrize("run", RUNS)
def test_generations_at_eval_are_written_once_for_the_same_prompts(runs, run):
    sharded, reference = runs
    case = run.split(":")[1]
    got, expected = sharded[run]["generations"], reference[sharded_run.REFERENCE.get(case, case)]["generations"]
    assert len(got) == len(expected) == sharded_run.GENERATIONS  # the main process alone wrote them
    for mine, theirs in zip(got, expected):
        assert (mine["step"], mine["prompt"], mine["chosen"], mine["rejected"]) == (
            theirs["step"], theirs["prompt"], theirs["chosen"], theirs["rejected"])
        assert mine["sample"] and mine["sample_mean_logp"] < 0, mine
