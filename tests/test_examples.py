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

from testkit import REPO

RECIPES = sorted((REPO / "examples" / "yaml").glob("*.yml"))


def test_there_are_recipes():
    names = {path.name for path in RECIPES}
    assert {"cpu-demo.yml", "llama3-8b-qlora.yml", "multi-gpu-deepspeed-zero2.yml", "multi-gpu-fsdp.yml"} <= names
    # One per model family (tests/testkit.py maps each family to its recipes).
    assert {"qwen3-8b-qlora.yml", "mistral-nemo-12b-qlora.yml", "gemma2-9b-qlora.yml", "gemma3-1b-full.yml",
            "phi35-mini-qlora.yml", "phi4-14b-qlora.yml"} <= names


# All recipes in ONE subprocess (importing axolotl is most of the time). load_cfg has process-wide
# side effects (DeepSpeed's global config, accelerate env vars, Axolotl's plugin singleton) that would
# leak into the in-process trainer tests, hence the subprocess; between recipes it restores the
# environment, so a DeepSpeed recipe's variables do not reach the next one. A recipe that fails is
# reported with its traceback and fails its own test below.
VALIDATE = """
import json, os, sys, traceback
from axolotl.cli.config import load_cfg
base_model, recipes = sys.argv[1], sys.argv[2:]
environment = dict(os.environ)
for recipe in recipes:
    try:
        cfg = load_cfg(recipe, base_model=base_model)
        result = {"merlina_enabled": cfg.merlina_enabled, "rl": cfg.rl, "chat_template": cfg.chat_template,
                  "types": [entry["type"] for entry in cfg.merlina_datasets]}
    except Exception:
        result = {"error": traceback.format_exc()}
    finally:
        os.environ.clear()
        os.environ.update(environment)
    print("CFG=" + json.dumps({"recipe": recipe, **result}, default=str), flush=True)
"""


@pytest.fixture(scope="module")
def validated(tiny_llama_dir) -> dict[str, dict]:
    """Each recipe's validated config (or error), by file name, from one subprocess."""
    # Recipes give paths (deepspeed json, demo data) from the repo root. A DeepSpeed recipe makes
    # load_cfg open an NCCL process group unless it is only preprocessing.
    result = subprocess.run(
        [sys.executable, "-c", VALIDATE, str(tiny_llama_dir), *map(str, RECIPES)], cwd=REPO, capture_output=True,
        text=True, env={**os.environ, "AXOLOTL_IS_PREPROCESS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [json.loads(line[4:]) for line in result.stdout.splitlines() if line.startswith("CFG=")]
    return {Path(entry.pop("recipe")).name: entry for entry in lines}


@pytest.mark.needs("axolotl")  # validated by Axolotl's own load_cfg
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_opens_with_a_header_and_validates(recipe: Path, validated):
    text = recipe.read_text()
    header = text.split("\n\n", 1)[0]
    for part in ("What it trains", "Command", "What to change"):
        assert part in header, f"{recipe.name}: the header should say {part!r}"
    raw = yaml.safe_load(text)
    assert raw["rl"] == "orpo_standalone" and "merlina_orpo_plugin.MerlinaORPOPlugin" in raw["plugins"]
    cfg = validated[recipe.name]
    assert "error" not in cfg, f"{recipe.name}:\n{cfg.get('error')}"
    assert cfg["merlina_enabled"] and cfg["rl"] is None
    assert cfg["types"] == [entry["type"] for entry in raw["datasets"]]
    assert cfg["chat_template"] == raw.get("chat_template")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_state_only_what_differs_from_the_plugin_defaults(recipe: Path):
    """A recipe that restates a default hides which knobs it really turns (issue: defaults once).

    Each plugin option is looked up under every key the options table reads it from (`merlina_<name>`,
    or Axolotl's own keys such as `orpo_alpha` and the nested `trl.beta`); a value equal to the table's
    default must not be set.
    The resolved settings still carry the default (`yaml_settings`), so leaving it out changes nothing.
    """
    from merlina_orpo_plugin.options import OPTIONS, _lookup

    raw = yaml.safe_load(recipe.read_text())
    restated = [f"{key}: {_lookup(raw, key)!r}" for option in OPTIONS
                for key in ((option.yaml_key,) if option.yaml_key else option.axolotl_keys)
                if _lookup(raw, key) is not None and _lookup(raw, key) == option.default]
    assert not restated, f"{recipe.name} restates defaults: {restated}"
