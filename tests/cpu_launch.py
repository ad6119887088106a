"""`torchrun ... tests/cpu_launch.py MODULE ARGS...`: run MODULE (e.g. axolotl.cli.train) as `python -m` would,
on a CPU host whose torch may be a CUDA build without a GPU.

The one change: `torch.cuda.can_device_access_peer` answers False when no CUDA device exists, as the
question deserves, instead of raising "Found no NVIDIA driver" inside Axolotl's peer-to-peer check
(tests/host_repros/axolotl_p2p_check.py shows that crash without this package). A test-setup
workaround for the host, never part of the package: on a GPU machine nothing changes.
"""

from __future__ import annotations

import runpy
import sys


def answer_p2p_without_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        return
    torch.cuda.can_device_access_peer = lambda device, peer: False


if __name__ == "__main__":
    answer_p2p_without_a_gpu()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
