"""Every recipe in examples/yaml goes through Axolotl's real config loading and our plugin's checks.

The hub is unreachable here, so `base_model` is pointed at a tiny local model of the same family;
everything else is validated as written (datasets entries, dataset types, ORPO options).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("axolotl", reason="validating recipes needs axolotl (installed by make test)")

from conftest import REPO  # noqa: E402
from e2e_helpers import tiny_model_dir  # noqa: E402

RECIPES = sorted((REPO / "examples" / "yaml").glob("*.yml"))


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


def test_there_are_recipes():
    names = {path.name for path in RECIPES}
    assert {"cpu-demo.yml", "llama3-8b-qlora.yml", "multi-gpu-deepspeed-zero2.yml", "multi-gpu-fsdp.yml"} <= names


# load_cfg has process-wide side effects (DeepSpeed's global config, accelerate env vars, Axolotl's
# plugin singleton) that would leak into the in-process trainer tests: validate in a subprocess.
VALIDATE = """
import json, sys
from axolotl.cli.config import load_cfg
cfg = load_cfg(sys.argv[1], base_model=sys.argv[2])
print("CFG=" + json.dumps({"merlina_enabled": cfg.merlina_enabled, "rl": cfg.rl,
                           "types": [entry["type"] for entry in cfg.merlina_datasets]}))
"""


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_opens_with_a_header_and_validates(recipe: Path, local_model):
    text = recipe.read_text()
    header = text.split("\n\n", 1)[0]
    for part in ("What it trains", "Command", "What to change"):
        assert part in header, f"{recipe.name}: the header should say {part!r}"
    raw = yaml.safe_load(text)
    assert raw["rl"] == "orpo_standalone" and "merlina_orpo_plugin.MerlinaORPOPlugin" in raw["plugins"]
    # Recipes give paths (deepspeed json, demo data) from the repo root. A DeepSpeed recipe makes
    # load_cfg open an NCCL process group unless it is only preprocessing.
    result = subprocess.run(
        [sys.executable, "-c", VALIDATE, str(recipe), str(local_model)], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "AXOLOTL_IS_PREPROCESS": "1", "HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("CFG=")]
    cfg = json.loads(line[4:])
    assert cfg["merlina_enabled"] and cfg["rl"] is None
    assert cfg["types"] == [entry["type"] for entry in raw["datasets"]]
