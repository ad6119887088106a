"""Throughput and memory benchmark: Axolotl `rl: orpo`, Axolotl `rl: orpo_standalone`, TRL and this
package's trainer on one ORPO workload. Run it with ``python -m benchmarks.run`` (see README.md here).
"""
