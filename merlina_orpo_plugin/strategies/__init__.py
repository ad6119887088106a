"""Dataset strategies: one raw row of a preference dataset -> one pair in a layout the tokeniser reads.

    strategy = get_strategy({"path": "pairs.json", "type": "sharegpt", "field_chosen": "better"})
    pair = strategy(row)  # {"prompt": [...], "chosen": [...], "rejected": [...]}; strategy.layout

Types are looked up by the dataset entry's ``type`` in a pluggy registry (``registry.py``): the
built-ins of ``chat.py`` (``chat_template.argilla``, ``chat_template``, ``sharegpt``) and
``text.py`` (``chat_template.intel``, ``hh_rlhf``, ``prompt_pairs``), plus any installed package
that implements ``merlina_orpo_dataset_types`` (``hookspecs.py``) under the entry-point group
``merlina_orpo.dataset_types``. A malformed row raises ``RowError``; a bad dataset entry raises
ValueError when the strategy is built.
"""

from ..data.layouts import Layout
from .hookspecs import (
    CONVERSATIONAL,
    ENTRY_POINT_GROUP,
    LAYOUTS,
    TEXT,
    DatasetStrategy,
    RowError,
    StrategyFactory,
    hookimpl,
    hookspec,
)
from .registry import available_types, get_strategy, plugin_manager, register_plugin, reset_registry

__all__ = [
    "CONVERSATIONAL",
    "ENTRY_POINT_GROUP",
    "LAYOUTS",
    "Layout",
    "TEXT",
    "DatasetStrategy",
    "RowError",
    "StrategyFactory",
    "available_types",
    "get_strategy",
    "hookimpl",
    "hookspec",
    "plugin_manager",
    "register_plugin",
    "reset_registry",
]
