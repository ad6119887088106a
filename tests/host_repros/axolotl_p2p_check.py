"""Axolotl's CUDA peer-to-peer check in a 2-process run, with nothing of this package: prints JSON.

    python tests/host_repros/axolotl_p2p_check.py [--with-cpu-launch]

`axolotl.utils.environment.check_cuda_p2p_support` (0.19 and 0.21 alike; `prepare_optim_env` calls it
before every training run) asks `torch.cuda.can_device_access_peer(rank, other)` when WORLD_SIZE > 1
and only catches AssertionError. A CPU build of torch raises AssertionError ("not compiled with CUDA"),
so the check answers True; a CUDA build on a host without a GPU (what pip installs on Python 3.12)
raises RuntimeError ("Found no NVIDIA driver") and every CPU rank dies. `--with-cpu-launch` applies the
suite's workaround first (tests/cpu_launch.py).
"""

import json
import os
import sys
from pathlib import Path

os.environ.update(WORLD_SIZE="2", LOCAL_RANK="0")

import torch  # noqa: E402

if "--with-cpu-launch" in sys.argv:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cpu_launch import answer_p2p_without_a_gpu

    answer_p2p_without_a_gpu()

from axolotl.utils.environment import check_cuda_p2p_support  # noqa: E402

report = {"torch": torch.__version__, "cuda_build": torch.version.cuda is not None, "gpu": torch.cuda.is_available()}
try:
    report["answer"] = check_cuda_p2p_support()
except Exception as error:  # the point: which exception escapes Axolotl's check
    report["raised"] = f"{type(error).__name__}: {error}"
print(json.dumps(report))
