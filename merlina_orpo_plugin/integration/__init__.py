"""Axolotl integration: the plugin, its YAML options, its trainer and its dataset loading.

Everything here imports Axolotl; nothing outside this package does.
"""
