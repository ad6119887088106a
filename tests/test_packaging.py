"""The package as a user installs it into an existing environment: a wheel with every module and the
entry points Axolotl discovers its commands and (from 0.21) its plugins by, built offline from this checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from testkit import REPO


def test_the_wheel_carries_the_package_and_the_axolotl_entry_points(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True)
    (wheel,) = tmp_path.glob("merlina_orpo_plugin-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    package = sorted(str(p.relative_to(REPO)) for p in (REPO / "merlina_orpo_plugin").rglob("*.py"))
    assert [n for n in package if n not in names] == []
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names)
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[axolotl.cli_commands]" in text
    assert "orpo-preview = merlina_orpo_plugin.integration.cli:orpo_preview" in text
    assert "orpo-eval = merlina_orpo_plugin.integration.eval_cli:orpo_eval" in text
    # Axolotl 0.21 normalises `module:Class` to `module.Class`: the name README tells `plugins:` to list
    assert "[axolotl.plugins]\nmerlina-orpo = merlina_orpo_plugin:MerlinaORPOPlugin\n" in text
