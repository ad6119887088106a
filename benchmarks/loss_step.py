"""Step time of the ways the chunked loss runs (``default``: what the trainer runs, ``checkpointed``,
``unchunked``) for a frozen head (LoRA) or a trained one (full fine-tune), interleaved step by step, with
each way's peak memory growth; one line of JSON ("The loss alone" in README.md here)."""

from __future__ import annotations

import inspect
import json
import statistics
from unittest import mock

import torch

from .workload import CHUNK, PROJECTIONS


def add_arguments(p) -> None:
    p.add_argument("--tune", choices=("lora", "full"), default="lora")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--prompt", type=int, default=320)
    p.add_argument("--answer", type=int, default=40)
    p.add_argument("--steps", type=int, default=5)


def setup(args):
    """The model and the one collated batch every way runs."""
    import peft
    from transformers import LlamaForCausalLM

    from .loss_paths import collate
    from .workload import llama_config, random_pairs

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("cpu", args.vocab))
    if args.tune == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, target_modules=PROJECTIONS[:4]))
    lengths = [(n, n) for n in (args.prompt, args.answer, args.answer - 5)]
    return model, collate(random_pairs(4, *lengths, args.vocab, seed=0, ids_seed=0), True, True)


def main(args) -> int:
    import merlina_orpo_plugin.model.adapter as adapter

    from .loss_paths import ours_loss
    from .measure import PeakDelta
    from .report import command, environment

    model, batch = setup(args)
    chunked = adapter.chunked_token_logps

    def recomputing(*chunk_args, **chunk_kwargs):  # score_hidden passes `recompute` by position or name
        bound = inspect.signature(chunked).bind(*chunk_args, **chunk_kwargs)
        bound.arguments["recompute"] = True
        return chunked(*bound.args, **bound.kwargs)

    ways = {"default": (CHUNK, True, chunked), "checkpointed": (CHUNK, False, recomputing), "unchunked": (0, False, chunked)}
    growth, times = {way: 0 for way in ways}, {way: [] for way in ways}

    def step(way: str) -> float:
        chunk, fused, score = ways[way]
        with PeakDelta() as m, mock.patch.object(adapter, "chunked_token_logps", score):  # score_hidden's lookup
            ours_loss(model, batch, chunk, fused=fused)[0].backward()
        growth[way] = max(growth[way], m.bytes)
        model.zero_grad(set_to_none=True)
        return m.seconds

    for way in ways:
        step(way)
    for _ in range(args.steps):
        for way in ways:
            times[way].append(step(way))
    median = {way: round(statistics.median(t), 3) for way, t in times.items()}
    settings = {k: getattr(args, k) for k in ("tune", "vocab", "prompt", "answer", "steps")}
    print(json.dumps({"command": command("loss-step", args.argv), "environment": environment("cpu"),
                      "settings": settings, "threads": torch.get_num_threads(), "median_step_s": median,
                      "peak_growth_mib": {way: round(b / 2**20) for way, b in growth.items()},
                      "checkpointed_over_default": round(median["checkpointed"] / median["default"], 2)}))
    return 0
