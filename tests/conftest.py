"""pytest wiring: the shared fixtures (testkit.py) and the rule that only GPU tests may skip.

A clone runs every test: a test that skips without the `gpu` marker (a missing package, a missing
file, a `pytest.skip` anywhere) fails the session, so `make test` and `.ci/run` cannot stay green
while checking less than they claim. A GPU test is marked `gpu` and skips in its body or a fixture (a
module skipped while it imports has no markers to show, so it counts as a bad skip).
"""

from __future__ import annotations

import pytest

pytest_plugins = ("testkit", "pytester")  # pytester: test_suite_rules.py runs this file on small suites

_bad_skips: list[str] = []  # "node id: reason" of each skip without the gpu marker, this session


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; the only tests that may skip (see tests/conftest.py)")


def _note_skip(report) -> None:
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
