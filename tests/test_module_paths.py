"""Module paths from before `batch/`, `model/` and `compute/` (merlina_orpo_plugin/_moved.py): each still
imports, as the very module at its new path, with a DeprecationWarning naming where it went; every
new path exists and no old file is left behind."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from merlina_orpo_plugin._moved import MOVED
from testkit import REPO


# One fresh interpreter for all (this one may have imported an old path already: no second warning then).
CHECK = """
import importlib, json, sys, warnings
from merlina_orpo_plugin._moved import MOVED
seen = {}
for old, new in MOVED.items():
    module = importlib.import_module(f"merlina_orpo_plugin.{new}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = importlib.import_module(f"merlina_orpo_plugin.{old}")
    seen[old] = [again is module, [str(w.message) for w in caught if w.category is DeprecationWarning]]
print(json.dumps(seen))
"""


def test_an_old_path_is_the_module_at_its_new_path_with_a_warning():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=REPO, check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {old: [True, [f"merlina_orpo_plugin.{old} moved to merlina_orpo_plugin.{new}; import it from there"]]
                    for old, new in MOVED.items()}


def test_every_new_path_imports_and_no_old_file_remains():
    for old, new in MOVED.items():
        importlib.import_module(f"merlina_orpo_plugin.{new}")
        assert not (REPO / "merlina_orpo_plugin" / f"{old}.py").exists(), old


def test_a_name_that_never_existed_still_fails():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("merlina_orpo_plugin.no_such_module")
