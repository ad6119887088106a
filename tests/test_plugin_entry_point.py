"""The `axolotl.plugins` entry point: Axolotl 0.21 loads the plugin for every config, 0.19 ignores it.

Each test branches on `axolotl.__version__` and asserts what that release does: on 0.21 a recipe with
only `rl: orpo_standalone` trains, an SFT recipe trains bit for bit as if the package were not
installed (its entry point hidden from a subprocess by `e2e_helpers.hide_entry_points`), and listing
the plugin under `plugins:` as well loads it once; on 0.19 the entry point is in the metadata but
Axolotl never reads it, so `rl: orpo_standalone` without `plugins:` fails Axolotl's enum check.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from e2e_helpers import CliRun, hide_entry_points, log_history, write_config
from testkit import pairs_path

pytestmark = pytest.mark.needs("axolotl")

GROUP = "axolotl.plugins"
#: What README tells `plugins:` to list, and what Axolotl 0.21 makes of the entry point's value.
DOCUMENTED = "merlina_orpo_plugin.MerlinaORPOPlugin"
#: Another spelling that imports the same class; Axolotl keys plugins by name, so it is a second instance.
MODULE_PATH = "merlina_orpo_plugin.integration.plugin.MerlinaORPOPlugin"
LOADED = "Plugin loaded successfully: {}"


def _loads_entry_points() -> bool:
    """Axolotl 0.21 added the `axolotl.plugins` group; 0.19, the other release tested, has none."""
    import axolotl
    from packaging.version import Version

    return Version(axolotl.__version__) >= Version("0.21")


def _ours(manager) -> dict:
    from merlina_orpo_plugin import MerlinaORPOPlugin

    return {name: plugin for name, plugin in manager.plugins.items() if isinstance(plugin, MerlinaORPOPlugin)}


def _hooks(plugin, cfg) -> dict:
    """What each hook the plugin overrides answers for ``cfg`` (the mixin aside: it takes no config)."""
    return {
        "get_input_args": plugin.get_input_args(),
        "load_datasets": plugin.load_datasets(cfg),
        "get_trainer_cls": plugin.get_trainer_cls(cfg),
        "get_collator_cls_and_kwargs": plugin.get_collator_cls_and_kwargs(cfg),
        "get_collator_cls_and_kwargs(eval)": plugin.get_collator_cls_and_kwargs(cfg, is_eval=True),
        "get_training_args": plugin.get_training_args(cfg),
    }


def _sft_config(directory, model_dir, **overrides):
    rows = [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"{i} plus {i + 1} is {2 * i + 1}."}
            for i in range(24)]
    data = directory / "alpaca.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return write_config(directory, model_dir, [{"path": str(data), "ds_type": "json", "type": "alpaca"}],
                        plugins=None, rl=None, orpo_alpha=None, save_strategy="steps", save_steps=3, **overrides)


def _full_sft_config(directory, model_dir):
    """A full fine-tune: Axolotl 0.19 initialises LoRA before seeding (0.21 seeds first in
    `loaders/adapter.py`), so two LoRA runs of one recipe differ on 0.19 whatever is installed."""
    return _sft_config(directory, model_dir, adapter=None, learning_rate=1e-4)


def _orpo_config(directory, model_dir, **overrides):
    entry = {"path": str(pairs_path("sharegpt_en.json")), "ds_type": "json", "type": "sharegpt"}
    return write_config(directory, model_dir, [entry], save_strategy="steps", save_steps=3, **overrides)


@pytest.fixture
def plugin_manager():
    """Axolotl's PluginManager singleton emptied, as a fresh process has it; restored afterwards."""
    from axolotl.integrations.base import PluginManager

    manager = PluginManager()
    saved = dict(manager.plugins)
    manager.plugins.clear()
    yield manager
    manager.plugins.clear()
    manager.plugins.update(saved)


def test_the_entry_point_is_the_name_plugins_lists():
    """One entry point, `module:Class` form; 0.21 normalises it to the documented `plugins:` name (so a
    recipe listing that name too gets the same instance) and loads it by default; 0.19 has no such group."""
    from importlib.metadata import entry_points

    import axolotl.integrations.base as base

    from merlina_orpo_plugin import MerlinaORPOPlugin

    (point,) = [p for p in entry_points(group=GROUP) if p.dist.name == "merlina-orpo-plugin"]
    assert point.value == "merlina_orpo_plugin:MerlinaORPOPlugin"
    assert point.load() is MerlinaORPOPlugin
    if _loads_entry_points():
        assert base.PLUGIN_ENTRY_POINT_GROUP == GROUP
        assert base.normalize_plugin_name(point.value) == DOCUMENTED
        assert DOCUMENTED in base.get_builtin_plugins()
    else:
        assert not hasattr(base, "PLUGIN_ENTRY_POINT_GROUP") and not hasattr(base, "get_builtin_plugins")


@pytest.mark.parametrize("rl", [None, "dpo", "ipo", "kto", "orpo", "simpo", "grpo"])
def test_other_configs_are_untouched_and_every_hook_answers_none(rl):
    """`register` leaves a non-ORPO raw config as it was (keys it would move for ORPO included) and every
    config hook returns None: the other `rl` types and SFT run as if the plugin were absent."""
    from merlina_orpo_plugin import MerlinaORPOPlugin

    raw = {"rl": rl, "datasets": [{"path": "data.json", "type": "chat_template", "field_chosen": "good"}],
           "generate_samples": True, "eval_table_size": 4, "sample_packing": True}
    before = copy.deepcopy(raw)
    plugin = MerlinaORPOPlugin()
    plugin.register(raw)
    assert raw == before
    assert _hooks(plugin, raw) == dict.fromkeys(_hooks(plugin, raw))


def test_an_sft_config_validates_without_the_plugins_keys(tmp_path, tiny_llama_dir, plugin_manager):
    """Through Axolotl's `load_cfg`: on 0.21 the plugin is loaded (entry point) yet adds no key to an SFT
    config and its hooks answer None; on 0.19 it is not loaded at all."""
    from axolotl.cli.config import load_cfg

    from merlina_orpo_plugin import MerlinaORPOPlugin

    cfg = load_cfg(str(_sft_config(tmp_path, tiny_llama_dir)))
    ours = _ours(plugin_manager)
    assert list(ours) == ([DOCUMENTED] if _loads_entry_points() else [])
    assert [key for key in cfg if key.startswith("merlina_")] == []
    assert cfg.rl is None and [entry["type"] for entry in cfg.datasets] == ["alpaca"]
    plugin = ours.get(DOCUMENTED) or MerlinaORPOPlugin()
    plugin.register(dict(cfg))
    assert _hooks(plugin, cfg) == dict.fromkeys(_hooks(plugin, cfg))


@pytest.mark.parametrize("listed", [DOCUMENTED, MODULE_PATH])
def test_listing_the_plugin_as_well_acts_once(tmp_path, tiny_llama_dir, plugin_manager, listed):
    """`plugins:` listing the plugin beside the entry point: the documented name is the entry point's, so
    0.21 holds one instance; another spelling gives two, of which only the first answers, so the schema
    merges (no duplicate base class) and the datasets load once (Axolotl refuses two loaders)."""
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.config import merge_input_args

    cfg = load_cfg(str(_orpo_config(tmp_path, tiny_llama_dir, plugins=[listed])))
    assert cfg.merlina_enabled and cfg.rl is None and cfg.merlina_datasets
    ours = _ours(plugin_manager)
    assert list(ours) == (list(dict.fromkeys([DOCUMENTED, listed])) if _loads_entry_points() else [listed])
    first, *others = ours.values()
    assert None not in [*_hooks(first, cfg).values(), first.get_training_args_mixin()]
    for other in others:
        assert _hooks(other, cfg) == dict.fromkeys(_hooks(other, cfg)) and other.get_training_args_mixin() is None
    merge_input_args()
    meta = plugin_manager.load_datasets(cfg)
    assert len(meta.train_dataset) > 0 and meta.total_num_steps == 3


def _losses(output_dir, *keys) -> list[tuple]:
    return [tuple(log[key] for key in keys) for log in log_history(output_dir) if "loss" in log]


@pytest.mark.slow
def test_rl_orpo_standalone_without_a_plugins_line(tmp_path, tiny_llama_dir):
    """`axolotl train` on two copies of one ORPO recipe, one without `plugins:`, one listing the plugin.
    0.21: both train (the entry point loads the plugin) to the same losses. 0.19: the listed one trains,
    the other fails Axolotl's `rl` enum check, since 0.19 loads only what `plugins:` lists."""
    runs = {}
    for name, plugins in (("bare", None), ("listed", [DOCUMENTED])):
        directory = tmp_path / name
        directory.mkdir()
        runs[name] = CliRun(["axolotl", "train", str(_orpo_config(directory, tiny_llama_dir, plugins=plugins))],
                            cwd=directory)
    listed = runs["listed"].result()
    bare = runs["bare"].result(check=_loads_entry_points())
    keys = ("loss", "nll_loss", "or_loss", "grad_norm")
    assert len(_losses(tmp_path / "listed" / "out", *keys)) == 3
    assert LOADED.format(DOCUMENTED) in listed.stdout + listed.stderr
    output = bare.stdout + bare.stderr
    if _loads_entry_points():
        assert bare.returncode == 0 and LOADED.format(DOCUMENTED) in output
        assert _losses(tmp_path / "bare" / "out", *keys) == _losses(tmp_path / "listed" / "out", *keys)
        assert (tmp_path / "bare" / "out" / "adapter_model.safetensors").exists()
    else:
        assert bare.returncode != 0
        assert "type=enum, input_value='orpo_standalone'" in output, output[-3000:]
        assert "merlina_orpo_plugin" not in output


def _entry_points_seen(cwd, **env) -> tuple[list[str], str]:
    """The `axolotl.plugins` values a fresh interpreter in ``cwd`` with ``env`` sees, and where it imports
    the package from."""
    code = ("import json, importlib.metadata as m, merlina_orpo_plugin as p; "
            f"print(json.dumps([[e.value for e in m.entry_points(group={GROUP!r})], p.__file__]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                            text=True, check=True)
    return tuple(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.slow
def test_sft_trains_the_same_with_and_without_the_entry_point(tmp_path, tiny_llama_dir):
    """One SFT recipe (tiny Llama, full fine-tune, 3 steps, seed 7) through `axolotl train` twice: with the
    package's entry point, and in an environment where the installed metadata has none. Same logged losses
    and gradient norms, bit-identical final weights. 0.21's log proves the plugin was loaded in the first
    run only; on 0.19 neither run loads it."""
    from safetensors.torch import load_file

    hidden = hide_entry_points(tmp_path, GROUP)
    seen, package = _entry_points_seen(tmp_path)
    assert "merlina_orpo_plugin:MerlinaORPOPlugin" in seen
    assert _entry_points_seen(tmp_path, **hidden) == ([value for value in seen if "merlina" not in value], package)
    runs = {}
    for name, env in (("with", {}), ("without", hidden)):
        directory = tmp_path / name
        directory.mkdir()
        runs[name] = CliRun(["axolotl", "train", str(_full_sft_config(directory, tiny_llama_dir))], cwd=directory,
                            **env)
    outputs = {name: (lambda r: r.stdout + r.stderr)(run.result()) for name, run in runs.items()}
    if _loads_entry_points():
        assert LOADED.format(DOCUMENTED) in outputs["with"]
        assert LOADED.format("axolotl.integrations.context_parallel.ContextParallelPlugin") in outputs["without"]
    assert LOADED.format(DOCUMENTED) not in outputs["without"]
    if not _loads_entry_points():
        assert "merlina_orpo_plugin" not in outputs["with"]
    losses = {name: _losses(tmp_path / name / "out", "loss", "grad_norm") for name in runs}
    assert len(losses["with"]) == 3 and losses["with"] == losses["without"]
    weights = {name: load_file(tmp_path / name / "out" / "model.safetensors") for name in runs}
    assert weights["with"].keys() == weights["without"].keys() and weights["with"]
    assert all(weights["with"][key].equal(weights["without"][key]) for key in weights["with"])
    base = load_file(tiny_llama_dir / "model.safetensors")
    assert not all(base[key].equal(weights["with"][key]) for key in base)  # it did train
