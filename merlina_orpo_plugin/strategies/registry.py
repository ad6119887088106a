"""The dataset-type registry: built-ins plus every installed plugin, through one pluggy manager.

Built on first use (``get_strategy`` / ``available_types``): the built-in modules are registered,
then every entry point of the group ``merlina_orpo.dataset_types`` is loaded, so merely importing
this package imports no third-party code. ``register_plugin`` adds an object programmatically;
``reset_registry`` forgets everything (tests, or after installing a package at run time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pluggy

from . import chat, hookspecs, text
from ..data.layouts import Layout
from .hookspecs import ENTRY_POINT_GROUP, LAYOUTS, PROJECT_NAME, DatasetStrategy, StrategyFactory

BUILTIN_NAME = "merlina_orpo_plugin"
_BUILTINS = (("merlina_orpo_plugin.strategies.chat", chat), ("merlina_orpo_plugin.strategies.text", text))

_manager: pluggy.PluginManager | None = None
_types: dict[str, tuple[StrategyFactory, str]] | None = None  # type name -> (factory, provider)


def plugin_manager() -> pluggy.PluginManager:
    """The manager, built on first call: built-ins first, then installed entry points."""
    global _manager
    if _manager is None:
        manager = pluggy.PluginManager(PROJECT_NAME)
        manager.add_hookspecs(hookspecs)
        for name, module in _BUILTINS:
            manager.register(module, name=name)
        # An entry point that fails to import raises here: a missing type later would hide why.
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        manager.check_pending()  # a misspelt `merlina_orpo_*` hook fails loudly instead of being ignored
        _manager = manager
    return _manager


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register an object or module with ``@hookimpl`` methods; returns its plugin name.

    The new types are checked at once, so a clash raises here rather than at the next lookup.
    """
    manager = plugin_manager()
    registered = manager.register(plugin, name=name)
    if registered is None:
        raise ValueError(f"plugin {name or plugin!r} is blocked in the merlina_orpo plugin manager")
    manager.check_pending()
    _invalidate()
    try:
        _type_table()
    except ValueError:
        manager.unregister(plugin)  # leave the registry usable for the other types
        _invalidate()
        raise
    return registered


def reset_registry() -> None:
    """Forget the manager, programmatic plugins included; the next use rebuilds and rescans entry points."""
    global _manager
    _manager = None
    _invalidate()


def _invalidate() -> None:
    global _types
    _types = None


def _provider(manager: pluggy.PluginManager, plugin: object, name: str) -> str:
    """'fancy_types (from fancy-orpo-types 1.2)' for an entry point; the registered name otherwise."""
    if any(n == name for n, _ in _BUILTINS):
        return BUILTIN_NAME
    for dist_plugin, dist in manager.list_plugin_distinfo():
        if dist_plugin is plugin:
            return f"{name} (from {dist.metadata['name']} {dist.version})"
    return name


def _type_table() -> dict[str, tuple[StrategyFactory, str]]:
    global _types
    if _types is not None:
        return _types
    manager = plugin_manager()
    table: dict[str, tuple[StrategyFactory, str]] = {}
    # Called one implementation at a time (not through `manager.hook`) to know which plugin gave
    # which type; wrappers make no sense for a hook that only returns a table, so they are skipped.
    for impl in manager.hook.merlina_orpo_dataset_types.get_hookimpls():
        if impl.wrapper or impl.hookwrapper:
            continue
        provider = _provider(manager, impl.plugin, impl.plugin_name)
        for type_name, factory in _checked_types(impl.function(), provider).items():
            if type_name in table:
                raise ValueError(
                    f"dataset type `{type_name}` is provided twice: by {table[type_name][1]} and by {provider}; "
                    "uninstall or rename one of them"
                )
            table[type_name] = (factory, provider)
    _types = table
    return table


def _checked_types(types: Any, provider: str) -> Mapping[str, Callable]:
    if not isinstance(types, Mapping):
        raise ValueError(f"{provider}: `merlina_orpo_dataset_types` must return a dict, got {type(types).__name__}")
    for type_name, factory in types.items():
        if not isinstance(type_name, str) or not type_name:
            raise ValueError(f"{provider}: dataset type names must be non-empty strings, got {type_name!r}")
        if not callable(factory):
            raise ValueError(f"{provider}: the factory of dataset type `{type_name}` is not callable")
    return types


def available_types() -> list[str]:
    """Every dataset type name, built-in and from plugins, sorted."""
    return sorted(_type_table())


def get_strategy(ds_cfg: Mapping[str, Any]) -> DatasetStrategy:
    """The strategy for one dataset entry of the config (``{path, type, field_chosen, ...}``).

    ValueError naming the key for a bad entry: no ``type``, an unknown one (with the list of
    available types), or an option the type refuses (raised by its factory, before any row is read).
    """
    if not isinstance(ds_cfg, Mapping):
        raise ValueError(f"a dataset entry must be a mapping of options, got {type(ds_cfg).__name__}")
    type_name = ds_cfg.get("type")
    table = _type_table()
    if not isinstance(type_name, str) or type_name not in table:
        problem = "has no `type`" if type_name is None else f"has unknown `type` {type_name!r}"
        raise ValueError(f"dataset entry {problem}; available types: {', '.join(sorted(table))}")
    factory, provider = table[type_name]
    strategy = factory(ds_cfg)
    layout = getattr(strategy, "layout", None)
    if declared_layout(strategy) not in LAYOUTS or not callable(strategy):
        raise ValueError(
            f"dataset type `{type_name}` from {provider} built {strategy!r}: a strategy must be callable "
            f"and have `layout` one of {', '.join(f'Layout.{m.name}' for m in LAYOUTS)}, got layout {layout!r}"
        )
    return strategy


def declared_layout(strategy) -> Layout | None:
    """The `Layout` a strategy declares (``"text"``, the first contract's name, is ``STANDARD``); None if none."""
    try:
        return Layout.named(getattr(strategy, "layout", None))
    except ValueError:
        return None
