"""The contract between dataset-type plugins and the registry: one pluggy hook, the strategy shape, RowError.

A package adds dataset types by implementing ``merlina_orpo_dataset_types`` with the ``hookimpl``
marker below and naming the implementing module (or object) under the entry-point group
``merlina_orpo.dataset_types`` in its own packaging metadata::

    [project.entry-points."merlina_orpo.dataset_types"]
    my_types = "my_package.orpo_types"

Everything a plugin author needs is importable from ``merlina_orpo_plugin.strategies``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import pluggy

from ..data.layouts import Layout

PROJECT_NAME = "merlina_orpo"
ENTRY_POINT_GROUP = "merlina_orpo.dataset_types"

# The two row layouts the tokeniser accepts from a strategy: members of the data package's one `Layout`.
CONVERSATIONAL = Layout.CONVERSATIONAL  # prompt / chosen / rejected as lists of {role, content} messages
TEXT = Layout.STANDARD  # prompt / chosen / rejected as plain strings, no chat template (`"text"` still accepted)
LAYOUTS = (CONVERSATIONAL, TEXT)

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class RowError(ValueError):
    """One raw row cannot become a preference pair; ``field`` is the row's column as the dataset names it.

    The caller adds where the row lives: "row 17 of data/pairs.jsonl: `better` is empty".
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"`{field}` {message}")
        self.field = field
        self.message = message

    def __reduce__(self):
        # The default would call RowError(str(self)) and fail: keep it picklable across `num_proc` workers.
        return type(self), (self.field, self.message)


@runtime_checkable
class DatasetStrategy(Protocol):
    """Turns ONE raw row into ONE new preference-pair dict; never mutates the row.

    ``layout`` is ``Layout.CONVERSATIONAL`` (``{"prompt": [messages], "chosen": [messages], "rejected":
    [messages]}``) or ``Layout.STANDARD`` (``{"prompt": str, "chosen": str, "rejected": str}``; the
    string ``"text"`` of the first contract is read as it); one strategy
    always returns the same layout, and the pipeline takes it as declared. A row the strategy cannot
    read raises ``RowError``; an empty answer is not such a row (it is an empty completion, trained
    as the end token alone), nor is a pair whose answers are the same (counted and warned about).
    """

    layout: Layout | str

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]: ...


# A factory takes the dataset entry of the YAML (a plain dict: path, type, field_chosen, ...),
# checks the options it reads and raises ValueError naming a bad key, and returns the strategy.
StrategyFactory = Callable[[Mapping[str, Any]], DatasetStrategy]


@hookspec
def merlina_orpo_dataset_types() -> Mapping[str, StrategyFactory]:
    """The dataset types this plugin provides: ``{type name: factory(ds_cfg) -> DatasetStrategy}``.

    Type names are what users write under ``datasets: - type:``; a name provided by two plugins
    is an error naming both. Called once per registry build, so return a fresh mapping cheaply.
    """
