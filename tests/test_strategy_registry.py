"""The dataset-type registry: lookup errors, plugins registered in code, and plugins found by entry point.

Against pluggy's real discovery: a throw-away distribution (package + `*.dist-info` with METADATA
and `entry_points.txt` naming the group `merlina_orpo.dataset_types`) is written to a temporary
directory put on `sys.path`, and `importlib.metadata` must find it, exactly as it would find a
`pip install`ed package.
"""

from __future__ import annotations

import re
import sys

import pluggy
import pytest

from merlina_orpo_plugin.strategies import (
    ENTRY_POINT_GROUP,
    TEXT,
    DatasetStrategy,
    available_types,
    get_strategy,
    hookimpl,
    plugin_manager,
    register_plugin,
    reset_registry,
)

BUILTIN_TYPES = ["chat_template", "chat_template.argilla", "chat_template.intel", "hh_rlhf", "prompt_pairs", "sharegpt"]


@pytest.fixture(autouse=True)
def _fresh_registry():
    reset_registry()
    yield
    reset_registry()


class ShoutPairs:
    """A third-party type: `q` / `good` / `bad` strings, upper-cased, text layout."""

    layout = TEXT

    def __init__(self, ds_cfg):
        self.suffix = ds_cfg.get("suffix", "!")

    def __call__(self, row):
        return {"prompt": row["q"].upper(), "chosen": row["good"].upper() + self.suffix, "rejected": row["bad"].upper()}


class ShoutPlugin:
    @hookimpl
    def merlina_orpo_dataset_types(self):
        return {"test.shout": ShoutPairs}


def unknown_type_list(type_name: str = "nope") -> list[str]:
    with pytest.raises(ValueError, match=f"unknown `type` '{type_name}'") as caught:
        get_strategy({"type": type_name})
    return caught.value.args[0].split("available types: ")[1].split(", ")


def test_builtin_types_are_listed_sorted():
    types = available_types()
    assert types == sorted(types)
    assert set(BUILTIN_TYPES) <= set(types)


def test_unknown_type_names_it_and_lists_every_type_sorted():
    assert unknown_type_list() == available_types()
    with pytest.raises(
        ValueError, match=r"dataset entry has unknown `type` 'sharegpt_v2'; available types: chat_template, "
    ):
        get_strategy({"path": "x.json", "type": "sharegpt_v2"})


@pytest.mark.parametrize(
    "ds_cfg, match",
    [
        ({"path": "x.json"}, "dataset entry has no `type`; available types: chat_template"),
        ({"type": {"field_prompt": "q"}}, r"unknown `type` \{'field_prompt': 'q'\}"),  # Axolotl's user-defined dict
        (["sharegpt"], "a dataset entry must be a mapping of options, got list"),
    ],
)
def test_bad_entries_raise(ds_cfg, match):
    with pytest.raises(ValueError, match=match):
        get_strategy(ds_cfg)


def test_strategies_satisfy_the_protocol_and_are_built_per_entry():
    first = get_strategy({"type": "prompt_pairs"})
    second = get_strategy({"type": "prompt_pairs", "field_chosen": "better"})
    assert isinstance(first, DatasetStrategy) and first is not second
    assert second.fields["field_chosen"] == "better" and first.fields["field_chosen"] == "chosen"


def test_plugin_registered_in_code_adds_a_type():
    name = register_plugin(ShoutPlugin(), name="shout")
    assert name == "shout"
    assert "test.shout" in available_types()
    assert "test.shout" in unknown_type_list()  # plugin types are offered in the error too
    strategy = get_strategy({"type": "test.shout", "suffix": "?"})
    assert strategy({"q": "hi", "good": "hello", "bad": "go"}) == {"prompt": "HI", "chosen": "HELLO?", "rejected": "GO"}
    reset_registry()
    assert "test.shout" not in available_types()


def test_a_module_with_hookimpl_functions_is_a_plugin_too(tmp_path, monkeypatch):
    module = type(sys)("merlina_test_module_plugin")

    @hookimpl
    def merlina_orpo_dataset_types():
        return {"test.module": ShoutPairs}

    module.merlina_orpo_dataset_types = merlina_orpo_dataset_types
    register_plugin(module)
    assert "test.module" in available_types()


def test_duplicate_type_names_both_providers_and_leave_the_registry_usable():
    class Clash:
        @hookimpl
        def merlina_orpo_dataset_types(self):
            return {"sharegpt": ShoutPairs}

    with pytest.raises(ValueError, match=r"`sharegpt` is provided twice: by merlina_orpo_plugin and by clash"):
        register_plugin(Clash(), name="clash")
    assert get_strategy({"type": "sharegpt"}).layout == "conversational"  # the clashing plugin was taken out

    register_plugin(ShoutPlugin(), name="shout")
    with pytest.raises(ValueError, match=r"`test.shout` is provided twice: by shout and by shout_again"):
        register_plugin(ShoutPlugin(), name="shout_again")


@pytest.mark.parametrize(
    "returned, match",
    [
        (["test.list"], "bad: `merlina_orpo_dataset_types` must return a dict, got list"),
        ({"": ShoutPairs}, "bad: dataset type names must be non-empty strings"),
        ({"test.bad": "not callable"}, "bad: the factory of dataset type `test.bad` is not callable"),
    ],
)
def test_malformed_plugin_tables_raise(returned, match):
    class Bad:
        @hookimpl
        def merlina_orpo_dataset_types(self):
            return returned

    with pytest.raises(ValueError, match=match):
        register_plugin(Bad(), name="bad")


def test_a_factory_that_builds_no_strategy_is_reported():
    class NoLayout:
        @hookimpl
        def merlina_orpo_dataset_types(self):
            return {"test.no_layout": lambda ds_cfg: lambda row: row}

    register_plugin(NoLayout(), name="no_layout")
    with pytest.raises(ValueError, match=r"`test.no_layout` from no_layout built .* got layout None"):
        get_strategy({"type": "test.no_layout"})


def test_a_misspelt_hook_is_refused():
    class Typo:
        @hookimpl
        def merlina_orpo_dataset_type(self):  # missing the final "s"
            return {"test.typo": ShoutPairs}

    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'merlina_orpo_dataset_type'"):
        register_plugin(Typo(), name="typo")


# --- discovery through a real entry point --------------------------------------------------------

PLUGIN_SOURCE = """
from merlina_orpo_plugin.strategies import TEXT, hookimpl


class Reverse:
    layout = TEXT

    def __init__(self, ds_cfg):
        self.column = ds_cfg.get("field_text", "text")

    def __call__(self, row):
        text = row[self.column]
        return {"prompt": "Reverse: " + text + "\\n", "chosen": text[::-1], "rejected": text}


@hookimpl
def merlina_orpo_dataset_types():
    return {TYPES}
"""


@pytest.fixture
def install_distribution(tmp_path, monkeypatch):
    """Write a package and its dist-info (what `pip install` leaves) to a fresh dir on sys.path."""
    modules = []

    def install(package: str, types: str, body: str = PLUGIN_SOURCE, entry_point: str = "test_types") -> None:
        site = tmp_path / f"site_{package}"
        (site / package).mkdir(parents=True)
        (site / package / "__init__.py").write_text(body.replace("{TYPES}", types))
        dist_info = site / f"{package}-0.1.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.1\n")
        (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_point} = {package}\n")
        monkeypatch.syspath_prepend(str(site))  # also invalidates importlib's path caches
        modules.append(package)

    yield install
    for package in modules:
        sys.modules.pop(package, None)


def test_entry_point_group_is_discovered_through_importlib_metadata(install_distribution):
    assert "test.reverse" not in available_types()
    install_distribution("merlina_test_reverse", '{"test.reverse": Reverse}')
    assert "test.reverse" not in available_types()  # discovery happens once per registry build
    reset_registry()
    assert "test.reverse" in available_types()
    assert "test.reverse" in unknown_type_list()
    assert plugin_manager().has_plugin("test_types")
    strategy = get_strategy({"type": "test.reverse", "field_text": "word"})
    assert strategy({"word": "stressed"}) == {
        "prompt": "Reverse: stressed\n",
        "chosen": "desserts",
        "rejected": "stressed",
    }


def test_entry_point_clash_names_the_distribution(install_distribution):
    install_distribution("merlina_test_clash", '{"prompt_pairs": Reverse}', entry_point="clashing")
    expected = "`prompt_pairs` is provided twice: by merlina_orpo_plugin and by clashing (from merlina-test-clash 0.1)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        available_types()


def test_an_entry_point_that_fails_to_import_is_not_swallowed(install_distribution):
    install_distribution("merlina_test_broken", "{}", body="raise ImportError('needs fancy_dep')\n")
    with pytest.raises(ImportError, match="needs fancy_dep"):
        get_strategy({"type": "sharegpt"})


def test_a_strategy_declaring_the_first_contracts_text_is_read_as_the_standard_layout():
    """Packages written before strategies named `Layout` members declare ``layout = "text"``: one vocabulary
    inside (`Layout`), that one alias accepted where a strategy is built, and the rows map as standard ones."""
    import datasets

    from merlina_orpo_plugin.integration.mapping import apply_strategy
    from merlina_orpo_plugin.strategies import Layout

    class OldShout(ShoutPairs):
        layout = "text"

    class OldPlugin:
        @hookimpl
        def merlina_orpo_dataset_types(self):
            return {"test.old": OldShout}

    register_plugin(OldPlugin(), name="old")
    raw = datasets.Dataset.from_list([{"q": "hi", "good": "hello", "bad": "go"}])
    checked, skipped = apply_strategy(raw, {"type": "test.old"}, source="rows", skip_bad_rows=False)
    assert checked.layout is Layout.STANDARD and not skipped
    assert checked.dataset[0] == {"prompt": "HI", "chosen": "HELLO!", "rejected": "GO"}
    assert get_strategy({"type": "sharegpt"}).layout is Layout.CONVERSATIONAL and TEXT is Layout.STANDARD
