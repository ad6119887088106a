"""``python -m benchmarks SUBCOMMAND [options]``: the one entry point of the benchmarks (README.md here)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from .impls import OFFLINE

#: subcommand -> (module with add_arguments and main; with run_job, the hidden --job), help
SUBCOMMANDS = {
    "train": ("train", "one ORPO workload through TRL, TRL + Liger, Axolotl `rl: orpo` / `rl: orpo_standalone`, "
                       "this trainer and the causal-LM limit"),
    "loss-memory": ("loss", "peak memory of the ORPO loss alone (hidden states -> head -> loss), TRL's against ours"),
    "preprocess-scale": ("preprocess", "preprocessing at 10k-200k generated pairs, the Python API, the Axolotl path "
                                       "and TRL's: time, CPU time and peak RSS, each size in a fresh process"),
    "gpu-check": ("gpu_check", "correctness on a GPU: layout equivalence, the trainer end to end"),
}


def parser(subcommand: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand listed; only ``subcommand``'s module imported, its options added, ``module`` and ``run`` set."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for name, (module, text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=text, description=text, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == subcommand:
            mod = importlib.import_module(f"benchmarks.{module}")
            sp.description = mod.main.__doc__ or mod.__doc__
            mod.add_arguments(sp)
            sp.set_defaults(module=mod, run=mod.main)
            if hasattr(mod, "run_job"):
                sp.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for key, value in OFFLINE.items():  # what every child process gets too (`impls.child_env`)
        os.environ.setdefault(key, value)
    args = parser(argv[0] if argv else None).parse_args(argv)
    args.argv = argv[1:]  # the subcommand's own options, as results record them
    if getattr(args, "job", None):
        job = json.loads(args.job.read_text())
        Path(job["result_path"]).write_text(json.dumps(args.module.run_job(job), indent=1, default=str))
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
