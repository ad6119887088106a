"""The suite's own rule (tests/conftest.py): a test that skips without the `gpu` marker fails the session.

Checked by running pytest, in a subprocess, with this conftest on small suites written here: a
`pytest.skip` in a test and a module skipped by `pytest.importorskip` fail it and are listed; a
skipping test marked `gpu` does not, and a suite whose only skips are such tests passes. A test marked
`needs("pkg")` skips, naming the leg and its reason, only in a compat leg whose `lacks` declares that
package (compat/legs.json) and where it is really missing; anywhere else a missing package fails it.
"""

from __future__ import annotations

import json
import os

from testkit import REPO

SKIPS = {
    "test_plain.py": "import pytest\n\ndef test_skips():\n    pytest.skip('a data file is missing')\n",
    "test_module.py": ("import pytest\n\npytest.importorskip('no_such_package_here')\n\n"
                       "def test_never_runs():\n    pass\n"),
}
ALLOWED = {
    "test_gpu.py": "import pytest\n\n@pytest.mark.gpu\ndef test_needs_cuda():\n    pytest.skip('no CUDA GPU')\n",
    "test_fine.py": "def test_passes():\n    assert True\n",
}


NEEDS = {"test_needs.py": ("import pytest\n\n@pytest.mark.needs('no_such_package_here')\n"
                            "def test_imports_it():\n    import no_such_package_here\n")}


def _run(pytester, monkeypatch, files: dict[str, str], leg: str | None = None, lacks: dict | None = None):
    monkeypatch.delenv("MERLINA_COMPAT_LEG", raising=False)
    if leg is not None:  # a legs file of the test's own
        legs = pytester.path / "legs.json"
        legs.write_text(json.dumps({"legs": {leg: {"lacks": lacks or {}}}}))
        monkeypatch.setenv("MERLINA_COMPAT_LEGS", str(legs))
        monkeypatch.setenv("MERLINA_COMPAT_LEG", leg)
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(**{name.removesuffix(".py"): text for name, text in files.items()})
    monkeypatch.setenv("PYTHONPATH", f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *(["-rs"] if leg else []))


def test_a_skip_without_the_gpu_marker_fails_the_session_and_is_listed(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, {**SKIPS, **ALLOWED})
    assert result.ret == 1
    result.assert_outcomes(passed=1, skipped=3)
    output = result.stdout.str()
    listed = output[output.index("skipped without the `gpu` marker: the session fails"):]
    assert "test_plain.py::test_skips: Skipped: a data file is missing" in listed
    assert "test_module.py: Skipped: could not import 'no_such_package_here'" in listed
    assert "test_gpu.py" not in listed


def test_skips_of_gpu_tests_alone_pass(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, ALLOWED)
    assert result.ret == 0
    result.assert_outcomes(passed=1, skipped=1)
    assert "skipped without the `gpu` marker" not in result.stdout.str()


def test_a_leg_skips_a_package_it_declares_absent_and_names_itself(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, {**NEEDS, **ALLOWED}, leg="bare", lacks={"no_such_package_here": "not on this leg"})
    assert result.ret == 0
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*leg bare has no no_such_package_here: not on this leg*"])


def test_a_missing_package_the_leg_does_not_declare_fails(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, NEEDS, leg="full", lacks={})
    assert result.ret == 1
    result.assert_outcomes(failed=1)


def test_outside_a_leg_a_missing_package_fails(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, NEEDS)
    assert result.ret == 1
    result.assert_outcomes(failed=1)
