"""The prepared-dataset cache (`integration/prepared_cache.py`) against the faults a disk leaves.

Each unit test writes a real copy with `load_or_build`, damages it on disk as an interrupted write, a
full disk, a stray edit or a killed writer would (an `.arrow` file cut to half its size, a file
deleted, the manifest deleted or garbled, a copy built from another key, a file that Arrow cannot
read although its size matches, a writer's temporary folder left behind), and loads again. Checked
against what the module promises: one warning line names the copy's path and the fault, the copy is
rebuilt, and what comes back is the rebuilt data (every build stamps its rows with its own number,
so rows read from the damaged copy would show it). A rank other than local rank 0 of a multi-process
run, in its own process, waits for rank 0's copy instead of building one.

Through the real CLI (slow): two `axolotl preprocess` at once on one `dataset_prepared_path` both
succeed with one copy between them; then its `.arrow` files are cut to half their size and the next
`axolotl train` says the prepared data was incomplete, rebuilds it and trains.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import datasets
import pytest
from e2e_helpers import CliRun, run_cli, write_config
from testkit import pairs_path

from merlina_orpo_plugin.integration import prepared_cache
from merlina_orpo_plugin.integration.prepared_cache import MANIFEST, load_or_build

KEY = "0123456789abcdef"
ARROW = "train/data-00000-of-00001.arrow"
LOGGER = "axolotl.integrations.merlina_orpo"


class Builds:
    """A build function that counts its calls and stamps each call's rows with the call's number."""

    def __init__(self, rows: int = 400):
        self.calls, self.rows = 0, rows

    def __call__(self):
        self.calls += 1
        stamp = [self.calls] * self.rows
        train = datasets.Dataset.from_dict({"input_ids": [[i, i + 1, i + 2] for i in range(self.rows)], "build": stamp})
        evaluation = datasets.Dataset.from_dict({"input_ids": [[7, 8]] * 3, "build": [self.calls] * 3})
        return {"train": train, "eval": evaluation}, {"train_pairs": self.rows, "eval_pairs": 3, "build": self.calls}


@pytest.fixture
def copy(tmp_path):
    """A whole copy at tmp_path/prepared/merlina-orpo-KEY, written by build 1: (target, builds)."""
    builds = Builds()
    target = tmp_path / "prepared" / f"merlina-orpo-{KEY}"
    load_or_build(target, KEY, builds)
    assert builds.calls == 1 and (target / MANIFEST).is_file()
    return target, builds


def _reload(target, builds, caplog, key=KEY):
    """Load again; (splits, summary, the warning lines logged)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        splits, summary = load_or_build(target, key, builds)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return splits, summary, warnings


def _assert_rebuilt(target, builds, caplog, fault: str, key=KEY):
    splits, summary, warnings = _reload(target, builds, caplog, key)
    assert len(warnings) == 1, warnings
    assert str(target) in warnings[0] and "incomplete or damaged" in warnings[0] and fault in warnings[0], warnings[0]
    assert builds.calls == 2 and summary["build"] == 2
    assert set(splits["train"]["build"]) == {2} and set(splits["eval"]["build"]) == {2}  # nothing of build 1
    assert len(splits["train"]) == builds.rows
    # ... and the rebuilt copy is whole: the next load reads it without a word
    _, summary, warnings = _reload(target, builds, caplog, key)
    assert warnings == [] and builds.calls == 2 and summary["build"] == 2


def test_a_whole_copy_is_loaded_not_rebuilt_and_its_manifest_lists_every_file(copy, caplog):
    target, builds = copy
    splits, summary, warnings = _reload(target, builds, caplog)
    assert warnings == [] and builds.calls == 1 and summary["build"] == 1
    assert "loading the prepared copy" in caplog.text
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["key"] == KEY and manifest["rows"] == {"train": 400, "eval": 3}
    on_disk = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk and ARROW in on_disk
    assert manifest["files"][ARROW]["size"] == (target / ARROW).stat().st_size
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, f"{target.name}.lock"])


def test_a_truncated_arrow_file_is_named_and_rebuilt(copy, caplog):
    """The issue's reproduction: the .arrow file cut to half its size."""
    target, builds = copy
    arrow = target / ARROW
    size = arrow.stat().st_size
    os.truncate(arrow, size // 2)
    _assert_rebuilt(target, builds, caplog, f"{ARROW} is {size // 2} bytes, the manifest says {size}")


def test_a_missing_file_is_named_and_rebuilt(copy, caplog):
    target, builds = copy
    (target / ARROW).unlink()
    _assert_rebuilt(target, builds, caplog, f"{ARROW} is missing")


def test_a_missing_manifest_is_named_and_rebuilt(copy, caplog):
    """What a copy written by the plugin before the manifest, or a write killed before it, looks like."""
    target, builds = copy
    (target / MANIFEST).unlink()
    _assert_rebuilt(target, builds, caplog, f"no manifest {MANIFEST}")


def test_an_unparseable_manifest_is_named_and_rebuilt(copy, caplog):
    target, builds = copy
    text = (target / MANIFEST).read_text()
    (target / MANIFEST).write_text(text[: len(text) // 2])
    _assert_rebuilt(target, builds, caplog, f"its manifest {MANIFEST} cannot be parsed")


def test_a_manifest_of_another_shape_is_named_and_rebuilt(copy, caplog):
    target, builds = copy
    manifest = json.loads((target / MANIFEST).read_text())
    (target / MANIFEST).write_text(json.dumps({**manifest, "files": list(manifest["files"])}))
    _assert_rebuilt(target, builds, caplog, "not an object with `files` (each with `size` and `checksum`)")


def test_a_copy_built_from_another_fingerprint_is_named_and_rebuilt(copy, caplog):
    target, builds = copy
    manifest = json.loads((target / MANIFEST).read_text())
    (target / MANIFEST).write_text(json.dumps({**manifest, "key": "fedcba9876543210"}))
    _assert_rebuilt(target, builds, caplog, f"built from key 'fedcba9876543210'; this config needs format "
                                            f"{prepared_cache.FORMAT} and key '{KEY}'")


def test_a_file_rewritten_to_its_old_size_fails_its_checksum(copy, caplog):
    target, builds = copy
    arrow = target / ARROW
    data = bytearray(arrow.read_bytes())
    data[-100:] = bytes(100)  # the last batch's bytes zeroed: same size, other content
    arrow.write_bytes(bytes(data))
    _assert_rebuilt(target, builds, caplog, f"{ARROW} has another checksum than the manifest's")


def test_an_arrow_read_error_is_named_and_rebuilt(copy, caplog):
    """A truncated file the manifest agrees with (as if the manifest were rewritten after the cut):
    Arrow's own error is caught, named, and the copy rebuilt."""
    target, builds = copy
    arrow = target / ARROW
    os.truncate(arrow, arrow.stat().st_size // 2)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["files"][ARROW] = {"size": arrow.stat().st_size,
                                "checksum": prepared_cache._checksum(arrow, arrow.stat().st_size)}
    (target / MANIFEST).write_text(json.dumps(manifest))
    _assert_rebuilt(target, builds, caplog, "Arrow cannot read it")


def test_a_killed_writers_temporary_folder_is_ignored_and_removed(tmp_path, caplog):
    """A writer killed mid-write leaves `.merlina-orpo-<key>.tmp-*` (half a copy) and no copy: the next
    load builds a copy of its own, never reads the leftover, and deletes it."""
    builds = Builds()
    target = tmp_path / "prepared" / f"merlina-orpo-{KEY}"
    leftover = target.parent / f".{target.name}.tmp-4242-deadbeef"
    other = Builds()
    other.calls = 8  # its rows say build 9: a copy read from it would show
    prepared_cache.write_copy(leftover, KEY, *other())  # written whole, then cut as a killed writer leaves it
    os.truncate(leftover / ARROW, 100)
    splits, summary, warnings = _reload(target, builds, caplog)
    assert warnings == [] and builds.calls == 1 and summary["build"] == 1 and set(splits["train"]["build"]) == {1}
    assert not leftover.exists() and "removed 1 folder(s) a killed writer left" in caplog.text
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, f"{target.name}.lock"])


def test_the_checksum_reads_small_files_whole_and_large_ones_at_both_ends(tmp_path):
    """Up to 2 MiB every byte counts; beyond, the first and last MiB (the cost of a load stays flat)."""
    path, mib = tmp_path / "blob", 1 << 20
    for size, changed_at, detected in [(2 * mib, mib, True), (3 * mib, 10, True), (3 * mib, 3 * mib - 10, True),
                                       (3 * mib, mib + mib // 2, False)]:
        data = bytearray(size)
        path.write_bytes(bytes(data))
        before = prepared_cache._checksum(path, size)
        data[changed_at] = 1
        path.write_bytes(bytes(data))
        assert (prepared_cache._checksum(path, size) != before) is detected, (size, changed_at)


def test_a_failed_write_leaves_no_copy_and_no_temporary_folder(tmp_path):
    """A build or save that raises (a full disk) publishes nothing: the next load builds from scratch."""
    target = tmp_path / "prepared" / f"merlina-orpo-{KEY}"

    def unsaveable():
        return {"train": datasets.Dataset.from_dict({"x": [1]})}, {"summary": {1, 2}}  # a set: not JSON

    with pytest.raises(TypeError, match="set is not JSON serializable"):
        load_or_build(target, KEY, unsaveable)
    assert sorted(p.name for p in target.parent.iterdir()) == [f"{target.name}.lock"]


_WAITING_RANK = """
import logging, sys
from pathlib import Path
from merlina_orpo_plugin.integration.prepared_cache import load_or_build
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
def build():
    raise SystemExit("local rank 1 built the copy")
splits, summary = load_or_build(Path(sys.argv[1]), sys.argv[2], build)
print(sorted(set(splits["train"]["build"])), summary["build"])
"""


def test_a_non_zero_local_rank_waits_for_rank_zero_to_build(tmp_path):
    """LOCAL_RANK 1 of WORLD_SIZE 2, started first on a damaged copy, neither builds nor reads it:
    it waits until local rank 0 (this process) has rebuilt the copy, then loads that."""
    target = tmp_path / "prepared" / f"merlina-orpo-{KEY}"
    builds = Builds()
    load_or_build(target, KEY, builds)
    os.truncate(target / ARROW, (target / ARROW).stat().st_size // 2)
    log = tmp_path / "rank1.log"
    env = {**os.environ, "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
    with log.open("w") as stderr:
        rank1 = subprocess.Popen([sys.executable, "-c", _WAITING_RANK, str(target), KEY], env=env,
                                 stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 120
        while "waits for local rank 0" not in log.read_text():
            assert rank1.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        load_or_build(target, KEY, builds)  # rank 0: finds the damage, rebuilds
        out, _ = rank1.communicate(timeout=120)
    finally:
        rank1.kill()
    assert rank1.returncode == 0, log.read_text()
    assert out.split() == ["[2]", "2"] and builds.calls == 2  # rank 1 read rank 0's rebuilt copy, built none


@pytest.mark.slow
@pytest.mark.needs("axolotl")
def test_two_preprocess_at_once_share_one_copy_and_train_rebuilds_it_when_truncated(tmp_path, tiny_llama_dir):
    """Two `axolotl preprocess` at once on one `dataset_prepared_path`: both succeed, one builds, the
    other loads its copy. The copy's `.arrow` files cut to half their size (the issue's reproduction),
    `axolotl train` names the copy as incomplete in one line, rebuilds it and trains."""
    entry = [{"path": str(pairs_path("orca_dpo_pairs.jsonl")), "ds_type": "json", "type": "chat_template.intel"}]
    config = write_config(tmp_path, tiny_llama_dir, entry, max_steps=2)
    runs = [CliRun(["axolotl", "preprocess", str(config)], cwd=tmp_path) for _ in range(2)]
    outputs = [result.stdout + result.stderr for result in (run.result() for run in runs)]
    said = [[line for line in output.splitlines() if "ORPO datasets:" in line] for output in outputs]
    assert sorted("prepared and saved" in output for output in outputs) == [False, True], said
    assert sum("loading the prepared copy" in output for output in outputs) == 1, said
    prepared = tmp_path / "prepared"
    folders = [p for p in prepared.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders  # one copy, no temporary folder left
    target = folders[0]
    arrows = sorted(target.rglob("*.arrow"))
    assert arrows
    for arrow in arrows:
        os.truncate(arrow, arrow.stat().st_size // 2)

    train = run_cli(["axolotl", "train", str(config)], cwd=tmp_path)
    output = train.stdout + train.stderr
    damaged = [line for line in output.splitlines() if "incomplete or damaged" in line]
    assert len(damaged) == 1 and str(target) in damaged[0] and ".arrow is " in damaged[0], damaged or output[-3000:]
    assert "prepared and saved" in output and "Expected to be able to read" not in output
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert all(arrow.stat().st_size > 0 for arrow in target.rglob("*.arrow"))
    assert [p for p in prepared.iterdir() if p.is_dir()] == [target]
