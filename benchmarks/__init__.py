"""The benchmark harness: ``python -m benchmarks SUBCOMMAND`` (``__main__``; README.md here)."""
