"""Axolotl integration: the plugin, its YAML options, its trainer and its dataset loading.

Everything here imports Axolotl; nothing outside this package does.
"""

import logging

# Under the "axolotl." namespace so that Axolotl's logging config shows our INFO lines with its own.
LOG = logging.getLogger("axolotl.integrations.merlina_orpo")
