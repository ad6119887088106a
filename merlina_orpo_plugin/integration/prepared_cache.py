"""The prepared-dataset cache under `dataset_prepared_path`: read whole, or not at all.

One copy per key (the hash of everything the tokens depend on, `datasets.dataset_hash`)::

    merlina-orpo-<key>/                     the copy: `DatasetDict.save_to_disk` + MANIFEST
    merlina-orpo-<key>.lock                 the file lock every reader and writer holds
    .merlina-orpo-<key>.tmp-<pid>-<hex>/    a copy being written; renamed to the copy when whole
    .merlina-orpo-<key>.old-<pid>-<hex>/    a damaged copy moved aside, deleted right after

A copy is written in full (files fsynced, the manifest last) to a temporary folder beside it and
renamed into place: rename(2) is atomic on one filesystem, so the copy's path holds a whole copy or
nothing. The manifest lists every file with its size and a checksum, the key it was built from and
the row counts. A copy whose manifest is missing or unparseable, built from another key, with a file
missing, of another size or checksum, that Arrow cannot read, or with other row counts is named in
one warning line and rebuilt; its data is never returned. A killed writer's temporary folder is
ignored and removed (the writer held the lock, so nobody is still writing it).

Processes: every reader and writer holds the file lock, as Axolotl's own `FileLockLoader` does (under
`axolotl train` every rank loads the data itself; nothing wraps the plugin's `load_datasets` in a
barrier). The builder is the first process to take the lock, except that in a multi-process run
(WORLD_SIZE > 1) only LOCAL_RANK 0 builds: the other ranks wait for a whole copy (blocked on the lock
while rank 0 writes). Two `axolotl preprocess` runs at once are both builders: the second to take
the lock finds the first one's copy whole and loads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import datasets
from filelock import FileLock

from . import LOG

MANIFEST = "merlina_orpo_manifest.json"
FORMAT = 1  # bump when the manifest's meaning changes: older copies are then rebuilt, never misread
_END_BYTES = 1 << 20  # checksum: the whole file up to 2 MiB, its first and last MiB beyond (see _checksum)
_WAIT_POLL_S = 1.0

Builder = Callable[[], tuple[dict[str, datasets.Dataset], dict]]


class DamagedCopy(Exception):
    """Why a copy on disk cannot be used (the message names what is wrong); never escapes this module."""


def load_or_build(target: Path, key: str, build: Builder) -> tuple[datasets.DatasetDict, dict]:
    """(splits, summary) from the whole copy at ``target``, built with ``build()`` (-> splits, summary)
    when it is absent or damaged; only local rank 0 of a multi-process run builds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not is_builder():
        return _wait_for_copy(target, key)
    with FileLock(f"{target}.lock"):
        _remove_leftovers(target)
        if target.exists():
            try:
                loaded = read_copy(target, key)
                LOG.info("ORPO datasets: loading the prepared copy in %s", target)
                return loaded
            except DamagedCopy as damage:
                LOG.warning("ORPO datasets: the prepared data in %s is incomplete or damaged (%s); rebuilding it "
                            "from the source datasets, nothing of it is read", target, damage)
        splits, summary = build()
        write_copy(target, key, splits, summary)
        LOG.info("ORPO datasets: prepared and saved to %s", target)
        return datasets.load_from_disk(str(target)), summary  # from the final path; checked as it was written


def is_builder() -> bool:
    """Whether this process may build the copy: any single process, local rank 0 of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("LOCAL_RANK", "0") == "0"


def _wait_for_copy(target: Path, key: str) -> tuple[datasets.DatasetDict, dict]:
    """A non-zero local rank: poll (under the lock, so never mid-write) until rank 0's copy is whole.
    If rank 0 fails, torchrun ends this rank with it."""
    logged = False
    while True:
        with FileLock(f"{target}.lock"):
            try:
                return read_copy(target, key)
            except DamagedCopy as damage:
                reason = damage
        if not logged:
            LOG.info("ORPO datasets: local rank %s waits for local rank 0 to prepare %s (now: %s)",
                     os.environ.get("LOCAL_RANK"), target, reason)
            logged = True
        time.sleep(_WAIT_POLL_S)


def read_copy(target: Path, key: str) -> tuple[datasets.DatasetDict, dict]:
    """(splits, summary) of the copy at ``target`` if it is whole and built from ``key``; else
    `DamagedCopy` naming the first fault found. Files are checked against the manifest before Arrow
    opens any of them, so a truncated file is never read."""
    if not target.is_dir():
        raise DamagedCopy("no prepared copy there")
    manifest = _read_manifest(target)
    if manifest.get("format") != FORMAT or manifest.get("key") != key:
        raise DamagedCopy(f"its manifest is format {manifest.get('format')!r} built from key "
                          f"{manifest.get('key')!r}; this config needs format {FORMAT} and key {key!r}")
    for name, expected in manifest["files"].items():
        _check_file(target, name, expected)
    try:
        loaded = datasets.load_from_disk(str(target))
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DamagedCopy(f"Arrow cannot read it: {type(error).__name__}: {error}") from error
    rows = {name: len(split) for name, split in loaded.items()}
    if rows != manifest["rows"]:
        raise DamagedCopy(f"it holds {rows} rows, the manifest says {manifest['rows']}")
    return loaded, manifest["summary"]


def _read_manifest(target: Path) -> dict:
    path = target / MANIFEST
    if not path.is_file():
        raise DamagedCopy(f"no manifest {MANIFEST}: its write never finished, or an older plugin wrote it")
    try:
        manifest = json.loads(path.read_text())
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not (isinstance(files, dict) and isinstance(manifest.get("rows"), dict) and "summary" in manifest
                and all(isinstance(f, dict) and {"size", "checksum"} <= f.keys() for f in files.values())):
            raise ValueError("not an object with `files` (each with `size` and `checksum`), `rows` and `summary`")
    except (OSError, ValueError) as error:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DamagedCopy(f"its manifest {MANIFEST} cannot be parsed: {error}") from error
    return manifest


def _check_file(target: Path, name: str, expected: dict) -> None:
    path = target / name
    if not path.is_file():
        raise DamagedCopy(f"{name} is missing")
    size = path.stat().st_size
    if size != expected["size"]:
        raise DamagedCopy(f"{name} is {size} bytes, the manifest says {expected['size']}")
    if _checksum(path, size) != expected["checksum"]:
        raise DamagedCopy(f"{name} has another checksum than the manifest's (rewritten or corrupted)")


def _checksum(path: Path, size: int) -> str:
    """sha256 of the whole file up to 2 MiB; beyond, of its first and last MiB. Every rank checks every
    file at every load: hashing gigabytes of token ids would cost more than reading them; a truncated
    file already fails on its size, and a rewritten one almost always differs at an end (the Arrow
    stream's schema at the head, the last batch at the tail)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= 2 * _END_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(_END_BYTES))
            handle.seek(size - _END_BYTES)
            digest.update(handle.read(_END_BYTES))
    return digest.hexdigest()


def write_copy(target: Path, key: str, splits: dict[str, datasets.Dataset], summary: dict) -> None:
    """Write the copy to a temporary folder beside ``target``, manifest last, and rename it into place
    (a damaged copy already there is moved aside and deleted). The caller holds the lock."""
    temporary = _sibling(target, "tmp")
    try:
        datasets.DatasetDict(splits).save_to_disk(str(temporary))
        files = sorted(p for p in temporary.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "key": key,
            "rows": {name: len(split) for name, split in splits.items()},
            "files": {str(p.relative_to(temporary)): {"size": p.stat().st_size,
                                                      "checksum": _checksum(p, p.stat().st_size)} for p in files},
            "summary": summary,
        }
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _fsync_tree(temporary)  # the data reaches the disk before the rename that publishes it
        if target.exists():
            aside = _sibling(target, "old")
            os.replace(target, aside)
            os.replace(temporary, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(temporary, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # a failed write (full disk) leaves nothing behind


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove_leftovers(target: Path) -> None:
    """Temporary and moved-aside folders of this key: only a writer killed mid-write leaves them (a
    live writer holds the lock we hold), and they are never read."""
    leftovers = [path for kind in ("tmp", "old") for path in sorted(target.parent.glob(f".{target.name}.{kind}-*"))]
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)
    if leftovers:
        LOG.info("ORPO datasets: removed %d folder(s) a killed writer left beside %s: %s",
                 len(leftovers), target, ", ".join(p.name for p in leftovers))


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
