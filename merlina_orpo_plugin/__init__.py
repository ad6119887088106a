"""merlina_orpo_plugin: a standalone ORPO trainer (arXiv:2403.07691) for transformers and Axolotl.

    from merlina_orpo_plugin import ORPOConfig, MerlinaORPOTrainer, create_orpo_trainer

No TRL import anywhere in this package. Names are imported on first use, so importing the package
does not load transformers, and only `MerlinaORPOPlugin` (what Axolotl's `plugins:` names) loads Axolotl.
"""

from importlib import import_module

from . import _moved

__version__ = "0.1.0"
_moved.install(__name__)  # old module paths (e.g. `merlina_orpo_plugin.scoring`) still import, with a warning

_EXPORTS = {
    "MerlinaORPOTrainer": ".trainer",
    "ORPOTrainerMixin": ".trainer",
    "ORPOConfig": ".config",
    "ORPODataCollator": ".batch.collator",
    "create_orpo_trainer": ".factory",
    "prepare_preference_dataset": ".data",
    "MerlinaORPOPlugin": ".integration.plugin",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
