"""Module paths that moved, still importable from where they were, with a DeprecationWarning.

`import merlina_orpo_plugin.scoring` (or `from merlina_orpo_plugin import losses`) gives the module
object at its new path, so code written against the old layout keeps working, identity included.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module (under merlina_orpo_plugin) -> where it lives now
MOVED = {
    "collator": "batch.collator",
    "packing": "batch.packing",
    "model_setup": "model.setup",
    "model_adapter": "model.adapter",
    "sharding": "model.head_sharding",
    "attention": "compute.attention",
    "forward": "compute.forward",
    "scoring": "compute.kernels",
    "losses": "compute.losses",
    "accumulation": "compute.accumulation",
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of the old paths with the modules at the new ones."""

    def __init__(self, package: str):
        self.targets = {f"{package}.{old}": f"{package}.{new}" for old, new in MOVED.items()}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.targets:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = self.targets[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:  # the module at the new path is already executed
        return None


def install(package: str) -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules(package))
