"""The options table is the one definition: every entry point derives from it and says the same thing.

Checks `ORPOConfig`, the plugin's YAML model, the training-args mixin and `get_training_args` against
`options.OPTIONS` (names, defaults, help), and that one bad value gets one message from Python and
from YAML.
"""

from __future__ import annotations

import dataclasses

import pytest

from merlina_orpo_plugin import ORPOConfig
from merlina_orpo_plugin.options import BOTH, OPTIONS, PYTHON, TRAINER_OPTIONS, YAML, ORPOSettings, prompt_floor


def _config_fields():
    return {f.name: f for f in dataclasses.fields(ORPOConfig)}


def test_orpo_config_has_every_python_option_with_the_tables_default_and_help():
    fields = _config_fields()
    for option in OPTIONS:
        if option.where == YAML:
            assert option.name not in fields, option.name
            continue
        assert fields[option.name].default == option.default, option.name
        assert fields[option.name].metadata["help"] == option.help, option.name


@pytest.mark.needs("axolotl")
def test_yaml_model_mixin_and_settings_come_from_the_table():
    from merlina_orpo_plugin.integration.args import MerlinaORPOArgs
    from merlina_orpo_plugin.integration.trainer import MerlinaTrainingArgsMixin

    yaml_fields = MerlinaORPOArgs.model_fields
    for option in OPTIONS:
        if option.where == PYTHON or not option.yaml_key:
            assert f"merlina_{option.name}" not in yaml_fields, option.name
            continue
        assert yaml_fields[option.yaml_key].default == option.default, option.name
        assert yaml_fields[option.yaml_key].json_schema_extra["description"] == option.help
    mixin = {f.name: f.default for f in dataclasses.fields(MerlinaTrainingArgsMixin)}
    assert mixin == {f"merlina_{o.name}": o.default for o in TRAINER_OPTIONS}
    assert [f.name for f in dataclasses.fields(ORPOSettings)] == [o.name for o in OPTIONS if o.where == BOTH]


def test_training_args_carry_every_trainer_option_from_yaml():
    from merlina_orpo_plugin.integration.args import training_args

    cfg = {"sequence_len": 300, "rl_beta": 0.3, "merlina_loss_chunk_size": 64, "merlina_padding_free": False}
    args = training_args(cfg)
    assert set(args) == {f"merlina_{o.name}" for o in TRAINER_OPTIONS}
    assert (args["merlina_beta"], args["merlina_max_length"], args["merlina_loss_chunk_size"]) == (0.3, 300, 64)
    assert args["merlina_padding_free"] is False and args["merlina_prefix_sharing"] is True


@pytest.mark.parametrize(
    ("python", "yaml"),
    [
        (dict(max_length=256, max_prompt_length=300), dict(sequence_len=256, merlina_max_prompt_length=300)),
        (dict(loss_chunk_size=-1), dict(merlina_loss_chunk_size=-1)),
        (dict(max_completion_length=0), dict(merlina_max_completion_length=0)),
        (dict(beta=-0.5), dict(orpo_alpha=-0.5)),
        (dict(prefix_sharing="yes"), dict(merlina_prefix_sharing="yes")),
    ],
)
def test_a_bad_value_gets_the_same_message_from_python_and_from_yaml(tmp_path, python, yaml):
    from merlina_orpo_plugin.integration.args import MerlinaORPOArgs

    with pytest.raises(ValueError) as from_python:
        ORPOConfig(output_dir=str(tmp_path), use_cpu=True, **python)
    with pytest.raises(ValueError) as from_yaml:
        MerlinaORPOArgs.model_validate({"merlina_enabled": True, **yaml})
    message = str(from_python.value)
    assert "(YAML: " in message
    assert message in str(from_yaml.value)


def test_the_prompt_length_rule():
    assert prompt_floor(1024, None) == 512
    assert prompt_floor(65, None) == 32
    assert prompt_floor(1024, 100) == 100
    assert prompt_floor(None, None) is None


def test_the_readme_option_tables_are_the_table():
    """README.md shows `python -m merlina_orpo_plugin.options` verbatim: docs cannot drift from the code."""
    from merlina_orpo_plugin.options import markdown_table
    from testkit import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert markdown_table(PYTHON) in readme
    assert markdown_table(YAML) in readme


def _nested(dotted: str, value):
    """``{"trl": {"beta": value}}`` for ``"trl.beta"``."""
    head, _, rest = dotted.partition(".")
    return {head: _nested(rest, value) if rest else value}


def test_every_yaml_alias_is_resolved_from_the_table_rows():
    """beta and max_length are read from the Axolotl keys their rows list, each alias alone, and nowhere else."""
    from merlina_orpo_plugin.integration.data_options import DataOptions
    from merlina_orpo_plugin.options import BY_NAME, yaml_settings, yaml_values

    assert BY_NAME["beta"].axolotl_keys == ("orpo_alpha", "rl_beta", "trl.beta")
    assert BY_NAME["max_length"].axolotl_keys == ("sequence_len",)
    assert BY_NAME["beta"].yaml_hint == "`orpo_alpha`, `rl_beta` or `trl.beta`"
    assert BY_NAME["max_length"].spelled == "`max_length` (YAML: `sequence_len`)"
    aliased = [o for o in OPTIONS if o.axolotl_keys]
    assert {o.name for o in aliased} == {"beta", "max_length"}
    for option in aliased:
        assert option.yaml_key is None, option.name  # Axolotl's schema owns those keys, not the plugin's
        value = 0.35 if option.type is float else 300
        for key in option.axolotl_keys:
            cfg = _nested(key, value)
            assert yaml_values(cfg) == {option.name: value}, key
            assert yaml_settings(cfg)[option.name] == value, key
        assert option.name not in yaml_values({}), option.name
        assert yaml_settings({})[option.name] == option.default
    assert DataOptions.from_cfg({"sequence_len": 300}).max_length == 300
    for first, second in ((k1, k2) for k1 in BY_NAME["beta"].axolotl_keys for k2 in BY_NAME["beta"].axolotl_keys
                          if k1 < k2):
        with pytest.raises(ValueError, match=rf"conflicting ORPO beta: `{first}: 0.1`, `{second}: 0.2`|"
                                             rf"conflicting ORPO beta: `{second}: 0.2`, `{first}: 0.1`"):
            yaml_values({**_nested(first, 0.1), **_nested(second, 0.2)})
        assert yaml_values({**_nested(first, 0.1), **_nested(second, 0.1)}) == {"beta": 0.1}


@pytest.mark.needs("axolotl")
def test_aliases_are_no_fields_of_the_plugins_yaml_model():
    from merlina_orpo_plugin.integration.args import MerlinaORPOArgs

    for option in OPTIONS:
        for key in option.axolotl_keys:
            assert key.split(".")[0] not in MerlinaORPOArgs.model_fields, key
