"""Shared state (results, parsed options, start time) and the helpers several sections use.

``ARGS`` is set by ``__main__.main``: other modules read it as ``common.ARGS`` at call time.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # before the heavy imports: the budget counts from the start of the script

import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

PAD = 2
BETA = 0.1
RESULTS: dict = {"env": {}, "section1": {}, "section2": {}, "trainer": {}, "errors": []}
ARGS = None  # the parsed options; reassigned by __main__.main


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def elapsed() -> float:
    return time.perf_counter() - T0


def remaining() -> float:
    return ARGS.budget_s - elapsed()


def out_dir() -> Path:
    """``--out``, else ``$OUT`` (the GPU machine's output folder), else ``benchmarks/results``."""
    return Path(ARGS.out or os.environ.get("OUT") or REPO / "benchmarks" / "results")


def out_stem() -> Path:
    """``<out>/<machine>-trainer-check`` or ``<out>/<machine>-gpu-check`` (``-quick`` added for --quick)."""
    from benchmarks.report import machine_slug

    kind = "trainer-check" if ARGS.trainer and not ARGS.sections else "gpu-check"
    return out_dir() / f"{machine_slug(ARGS.device)}-{kind}{'-quick' if ARGS.quick else ''}"


def save() -> None:
    """Write the results so far, machine paths scrubbed (rewritten after every measurement)."""
    from benchmarks.report import scrub

    try:
        out_dir().mkdir(parents=True, exist_ok=True)
        out_stem().with_suffix(".json").write_text(json.dumps(scrub(RESULTS), indent=1, default=str) + "\n")
    except Exception:  # never let saving kill the run
        traceback.print_exc()


def record_error(where: str) -> str:
    tb = traceback.format_exc()
    print(f"!!! {where} failed:\n{tb}", flush=True)
    RESULTS["errors"].append({"where": where, "traceback": tb[-4000:]})
    save()
    return tb.strip().splitlines()[-1][:300]


def sync() -> None:
    if ARGS.device == "cuda":
        torch.cuda.synchronize()


def free() -> None:
    gc.collect()
    if ARGS.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def random_pairs(n, prompt, chosen, rejected, vocab, seed):
    """``n`` features with lengths uniform in the (lo, hi) ranges; lengths depend on ``seed`` only."""
    lengths = random.Random(seed)
    ids = torch.Generator().manual_seed(seed + 1)

    def seq(lo_hi):
        length = lengths.randint(*lo_hi)
        return torch.randint(3, vocab, (length,), generator=ids).tolist()

    return [dict(prompt_input_ids=seq(prompt), chosen_input_ids=seq(chosen), rejected_input_ids=seq(rejected))
            for _ in range(n)]


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def collate(features, shared: bool, packed: bool) -> dict:
    from merlina_orpo_plugin.collator import ORPODataCollator
    from merlina_orpo_plugin.packing import BatchLayout

    return ORPODataCollator(pad_token_id=PAD, layout=BatchLayout(shared, packed))(features)


def trl_features(features) -> dict:
    """TRL's ORPO batch (as its DPO collator pads it): ``{chosen,rejected}_{input_ids,attention_mask,labels}``."""
    batch = {}
    for side in ("chosen", "rejected"):
        ids = [f["prompt_input_ids"] + f[f"{side}_input_ids"] for f in features]
        labels = [[-100] * len(f["prompt_input_ids"]) + f[f"{side}_input_ids"] for f in features]
        width = max(map(len, ids))
        batch[f"{side}_input_ids"] = torch.tensor([x + [PAD] * (width - len(x)) for x in ids])
        batch[f"{side}_attention_mask"] = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        batch[f"{side}_labels"] = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
    return batch


def trl_trainer(device):
    """An ``ORPOTrainer`` without ``__init__``: just the attributes its loss path reads."""
    from trl.experimental.orpo import ORPOTrainer

    trainer = object.__new__(ORPOTrainer)
    trainer.is_encoder_decoder = False
    trainer.padding_value = PAD
    trainer.label_pad_token_id = -100
    trainer.aux_loss_enabled = False
    trainer.aux_loss_coef = 0.0
    trainer.beta = BETA
    trainer.accelerator = SimpleNamespace(device=torch.device(device), gather_for_metrics=lambda x: x)
    return trainer


def ours_loss(model, batch, chunk):
    from merlina_orpo_plugin import losses as L
    from merlina_orpo_plugin.forward import concatenated_forward

    out = concatenated_forward(model, batch, nll_include_prompt=True, loss_chunk_size=chunk)
    loss = L.orpo_loss(out.nll_loss, L.odds_ratio_loss(out.chosen_logps, out.rejected_logps, BETA)[0])
    return loss, out.chosen_logps, out.rejected_logps, out.nll_loss


def trl_loss(trainer, model, batch):
    """TRL's ``get_batch_loss_metrics`` (metrics' ``.item()`` syncs included); its forward outputs captured."""
    captured = {}
    original = type(trainer).concatenated_forward

    def capture(model_, batch_):
        captured["out"] = original(trainer, model_, batch_)
        return captured["out"]

    trainer.concatenated_forward = capture
    try:
        loss, _metrics = trainer.get_batch_loss_metrics(model, batch)
    finally:
        del trainer.concatenated_forward
    chosen, rejected, _, _, nll = captured["out"][:5]
    return loss, chosen, rejected, nll


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (|a - b| where b is all zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    return diff / scale if scale > 0 else diff
