"""What each supported Axolotl release requires, read from its wheel on PyPI: compat/axolotl_pins.json.

    python3 compat/axolotl_pins.py 0.19.0 0.20.0 0.21.0

pyproject.toml's ranges must admit every one of these (tests/test_compat.py), or installing this
package into that Axolotl's environment would move a version Axolotl pins.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).with_name("axolotl_pins.json")


def requirements(version: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        # --python-version: 0.20+ need Python 3.12, whatever runs this script
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "-d", folder, f"axolotl=={version}"], check=True)
        (wheel,) = Path(folder).glob("axolotl-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            lines = archive.read(name).decode().splitlines()
    requires = [line.split(": ", 1)[1] for line in lines if line.startswith("Requires-Dist: ")]
    python = next(line.split(": ", 1)[1] for line in lines if line.startswith("Requires-Python: "))
    return {"requires_python": python, "requires": [r for r in requires if "extra ==" not in r]}


if __name__ == "__main__":
    OUT.write_text(json.dumps({v: requirements(v) for v in sys.argv[1:]}, indent=1) + "\n")
    print(f"wrote {OUT}")
