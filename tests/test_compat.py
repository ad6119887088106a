"""The install contract: this package's requirement ranges admit what every supported Axolotl pins.

Read against compat/axolotl_pins.json (each release's Requires-Dist, from its wheel on PyPI, by
compat/axolotl_pins.py): a `==` pin must lie inside our range for that package, and a range of
Axolotl's must keep each version it names that it admits (torch `>=2.11,<=2.13.0` -> 2.11.0 and
2.13.0). The `[axolotl]` extra must admit each release itself. Whether a real install moves nothing
is checked where it happens: `make compat` records it per leg (compat/results.md).
"""

from __future__ import annotations

import json
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from testkit import REPO

PINS = json.loads((REPO / "compat" / "axolotl_pins.json").read_text())
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _ours() -> dict[str, Requirement]:
    """Every requirement of the package and of its extras (the test extra too: `make compat` installs it
    into each leg, so it must not move Axolotl's pins either), by package name."""
    requirements = [*PROJECT["dependencies"], *(r for extra in PROJECT["optional-dependencies"].values() for r in extra)]
    ours: dict[str, Requirement] = {}
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in ours:  # one package in two lists (bitsandbytes): both ranges apply
            requirement.specifier &= ours[name].specifier
        ours[name] = requirement
    return ours


def _named_versions(requirement: Requirement) -> list[str]:
    """The versions an Axolotl requirement names and admits: its `==` pin, or the ends of its range."""
    return [spec.version for spec in requirement.specifier if requirement.specifier.contains(spec.version, prereleases=True)]


@pytest.mark.parametrize("release", sorted(PINS))
def test_our_ranges_admit_every_version_this_axolotl_pins(release):
    ours = _ours()
    checked, refused = [], []
    for text in PINS[release]["requires"]:
        theirs = Requirement(text)
        if theirs.marker is not None and not theirs.marker.evaluate({"sys_platform": "linux", "platform_machine": "x86_64"}):
            continue
        name = canonicalize_name(theirs.name)
        if name not in ours or name == "axolotl":
            continue
        for version in _named_versions(theirs):
            checked.append(f"{name}=={version}")
            if not ours[name].specifier.contains(version, prereleases=True):
                refused.append(f"{name}=={version} (ours: {ours[name].specifier})")
    assert refused == [], f"Axolotl {release} pins versions pyproject.toml refuses"
    # the packages a user's Axolotl environment pins and we also need: a vacuous pass fails here
    assert {c.split("==")[0] for c in checked} >= {"torch", "transformers", "datasets", "peft", "accelerate", "trl",
                                                   "bitsandbytes", "pydantic", "pyyaml"}, checked


@pytest.mark.parametrize("release", sorted(PINS))
def test_the_axolotl_extra_admits_each_supported_release(release):
    (extra,) = [Requirement(r) for r in PROJECT["optional-dependencies"]["axolotl"]]
    assert extra.specifier.contains(release), f"[axolotl] = {extra} refuses Axolotl {release}"


def test_the_negative_control_a_datasets_cap_below_5_is_refused():
    """The check above would have caught the shipped `datasets>=4.8,<5` against Axolotl 0.21's datasets==5.0.1."""
    capped = Requirement("datasets>=4.8,<5")
    (pin,) = [Requirement(r) for r in PINS["0.21.0"]["requires"] if r.startswith("datasets")]
    assert not all(capped.specifier.contains(v) for v in _named_versions(pin))


# --- the matrix runner's own parts (compat/run.py) -------------------------------------------------


def _runner():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compat_run", REPO / "compat" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_runner_records_every_version_an_install_moved_or_removed():
    run = _runner()
    before = {"datasets": "5.0.1", "torch": "2.14.1", "trl": "1.14.1"}
    after = {"datasets": "4.8.5", "torch": "2.14.1", "merlina-orpo-plugin": "0.1.0"}
    assert run.moved(before, after) == ["datasets 5.0.1 -> 4.8.5", "trl 1.14.1 -> removed"]
    assert run.moved(before, {**before, "new-package": "1"}) == []


def test_a_failed_install_step_is_tried_twice_then_named_with_the_free_disk(tmp_path):
    import sys

    run = _runner()
    counter = tmp_path / "tries"
    flaky = [sys.executable, "-c", f"import pathlib, sys; p = pathlib.Path({str(counter)!r}); "
             "n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1)); sys.exit(0 if n else 3)"]
    with (tmp_path / "install.log").open("w") as log:
        assert run._run(flaky, log).returncode == 0  # a dropped download: the second try succeeds
        with pytest.raises(RuntimeError, match="exited 4"):
            run._run([sys.executable, "-c", "raise SystemExit(4)"], log)
    text = (tmp_path / "install.log").read_text()
    assert counter.read_text() == "2" and text.count("SystemExit(4)") == 2 and "GiB free" in text
    assert run.log_tail(tmp_path / "install.log", lines=1).strip().startswith("[compat] exited 4 (attempt 2)")


def test_the_runner_finds_this_interpreter_by_its_version_and_refuses_one_that_is_not_there():
    import platform
    import sys

    run = _runner()
    version = ".".join(platform.python_version_tuple()[:2])
    found = run.find_python(version)
    assert found is not None
    probe = subprocess.run([found, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert probe.stdout.strip() == str(sys.version_info[:2])
    assert run.find_python("3.99") is None


def test_every_leg_names_its_python_its_user_stack_and_why_it_lacks_what_it_lacks():
    run = _runner()
    assert {"axolotl-0.19", "axolotl-0.21", "newest"} <= set(run.LEGS)
    for name, leg in run.LEGS.items():
        assert leg["python"] and leg["user"] and leg["extras"], name
        assert all(isinstance(why, str) and why for why in leg["lacks"].values()), name
    pins = {name: dict(r.split("==") for r in leg["user"] if "==" in r) for name, leg in run.LEGS.items()}
    assert pins["axolotl-0.19"]["axolotl"] == "0.19.0" and pins["axolotl-0.21"]["axolotl"] == "0.21.0"


def test_the_readme_shows_the_committed_compatibility_table_and_it_names_no_machine_path():
    """README.md's table is compat/results.md as `make compat` last wrote both (or says it has not run)."""
    run = _runner()
    shown = run.readme_table((REPO / "README.md").read_text())
    saved = REPO / "compat" / "results.md"
    if not saved.exists():
        assert shown == run.NOT_RUN
        return
    assert shown == saved.read_text().strip()
    results = json.loads((REPO / "compat" / "results.json").read_text())
    assert set(results) <= set(run.LEGS)
    text = shown + json.dumps(results)
    assert "/work/" not in text and "/root/" not in text and "/tmp/" not in text


def test_the_runner_writes_its_table_between_the_readme_markers_and_nowhere_else():
    run = _runner()
    readme = f"intro\n{run.README_START}\nold\n{run.README_END}\noutro\n"
    updated = run.with_table(readme, "| a | b |\n")
    assert updated == f"intro\n{run.README_START}\n| a | b |\n{run.README_END}\noutro\n"
    assert run.readme_table(updated) == "| a | b |"
