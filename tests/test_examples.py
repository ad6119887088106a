"""Every recipe in examples/yaml goes through Axolotl's real config loading and our plugin's checks.

The hub is unreachable here, so `base_model` is pointed at a tiny local model of the same family;
everything else is validated as written (datasets entries, dataset types, ORPO options).
"""

from __future__ import annotations

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


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_opens_with_a_header_and_validates(recipe: Path, local_model, monkeypatch):
    from axolotl.cli.config import load_cfg

    text = recipe.read_text()
    header = text.split("\n\n", 1)[0]
    for part in ("What it trains", "Command", "What to change"):
        assert part in header, f"{recipe.name}: the header should say {part!r}"
    raw = yaml.safe_load(text)
    assert raw["rl"] == "orpo_standalone" and "merlina_orpo_plugin.MerlinaORPOPlugin" in raw["plugins"]
    monkeypatch.chdir(REPO)  # recipes give paths (deepspeed json, demo data) from the repo root
    # A DeepSpeed recipe makes load_cfg open an NCCL process group unless it is only preprocessing.
    monkeypatch.setenv("AXOLOTL_IS_PREPROCESS", "1")
    cfg = load_cfg(str(recipe), base_model=str(local_model))
    assert cfg.merlina_enabled and cfg.rl is None
    assert [entry["type"] for entry in cfg.merlina_datasets] == [entry["type"] for entry in raw["datasets"]]
