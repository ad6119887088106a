"""pytest wiring: the shared fixtures (testkit.py) and the rule that only GPU tests, and a compat leg's
declared absences, may skip.

A clone runs every test: a test that skips without the `gpu` marker (a missing package, a missing
file, a `pytest.skip` anywhere) fails the session, so `make test` and `.ci/run` cannot stay green
while checking less than they claim. A GPU test is marked `gpu` and skips in its body or a fixture (a
module skipped while it imports has no markers to show, so it counts as a bad skip).

The one other skip: a test marked `needs("pkg")` in a leg of compat/legs.json (`MERLINA_COMPAT_LEG`,
set by compat/run.py) whose `lacks` names that package, with the leg's reason, and only while the
package really is missing. Outside a leg (`make test`), or where the leg does not declare it, a
missing package fails the test as before.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

LEG = os.environ.get("MERLINA_COMPAT_LEG") or None


def leg_lacks(leg: str | None = LEG) -> dict[str, str]:
    """``{package: why}`` the leg goes without (compat/legs.json); {} outside a leg."""
    if leg is None:
        return {}
    from testkit import REPO

    # MERLINA_COMPAT_LEGS: another legs file (tests/test_suite_rules.py runs this rule on legs of its own)
    legs = json.loads(Path(os.environ.get("MERLINA_COMPAT_LEGS", REPO / "compat" / "legs.json")).read_text())["legs"]
    if leg not in legs:
        raise pytest.UsageError(f"MERLINA_COMPAT_LEG={leg!r} is not a leg of compat/legs.json: {sorted(legs)}")
    return legs[leg]["lacks"]

pytest_plugins = ("testkit", "pytester")  # pytester: test_suite_rules.py runs this file on small suites

_bad_skips: list[str] = []  # "node id: reason" of each skip without the gpu marker, this session
_leg_skips: set[str] = set()  # node ids this leg skips for a package it declares absent


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; the only tests that may skip (see tests/conftest.py)")
    config.addinivalue_line("markers", "needs(*packages): imports these; a compat leg that lacks one skips it")


def pytest_collection_modifyitems(config, items):
    lacks = leg_lacks()
    for item in items:
        missing = [p for mark in item.iter_markers("needs") for p in mark.args
                   if p in lacks and importlib.util.find_spec(p) is None]
        if missing:
            _leg_skips.add(item.nodeid)
            item.add_marker(pytest.mark.skip(reason=f"leg {LEG} has no {missing[0]}: {lacks[missing[0]]}"))


def _note_skip(report) -> None:
    if report.nodeid in _leg_skips:
        return
    if report.skipped and not hasattr(report, "wasxfail") and "gpu" not in getattr(report, "keywords", ()):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _bad_skips.append(f"{report.nodeid or report.fspath}: {reason}")


def pytest_runtest_logreport(report):
    _note_skip(report)


def pytest_collectreport(report):  # a module skipped at import (`pytest.importorskip`, `allow_module_level`)
    _note_skip(report)


def pytest_sessionfinish(session):
    if _bad_skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _bad_skips:
        terminalreporter.section("skipped without the `gpu` marker: the session fails", red=True)
        for line in _bad_skips:
            terminalreporter.line(line)
