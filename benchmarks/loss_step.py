"""Step time of the ways the chunked loss runs, for a frozen head (LoRA) and a trained one (full fine-tune).

    python -m benchmarks.loss_step [--tune lora|full] [--vocab 49152] [--prompt 320] [--answer 40] [--steps 5]

A ``cpu``-size Llama from ``benchmarks.model`` (with ``--tune lora``: LoRA r 16 on the attention
projections, head frozen), one batch of 4 random pairs (prompt ``--prompt`` tokens, answers
``--answer`` and ``--answer - 5``), shared prompt and packing on; forward + backward of the ORPO
loss, median of ``--steps`` after one warm-up, the ways interleaved step by step so machine load hits
each alike; and each way's peak memory growth over a step (RSS high-water mark, reset before the
step, minus RSS before it; the largest of its steps):

* ``default``: what the trainer runs. A frozen head: each chunk's gradient kept from the forward
  (`scoring._FrozenHeadLogps`). A trained head: the loss summed over chunks of whole pairs with its
  gradients taken in the forward (`scoring.fused_chunk_loss`, `forward.FusedLoss`);
* ``checkpointed``: each chunk recomputed in backward (``recompute=True``; for a trained head, what
  ran before the fused loss);
* ``unchunked``: ``loss_chunk_size=0``, the model's full logits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from unittest import mock


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loss_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--tune", choices=("lora", "full"), default="lora")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--prompt", type=int, default=320)
    p.add_argument("--answer", type=int, default=40)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)

    import peft
    import torch
    from transformers import LlamaForCausalLM

    import merlina_orpo_plugin.model_adapter as adapter
    from merlina_orpo_plugin.collator import ORPODataCollator
    from merlina_orpo_plugin.accumulation import loss_scales
    from merlina_orpo_plugin.forward import FusedLoss, concatenated_forward
    from merlina_orpo_plugin.losses import odds_ratio_loss, orpo_loss
    from merlina_orpo_plugin.packing import BatchLayout

    from .measure import max_rss_kb, reset_peak_rss, rss_kb
    from .model import llama_config
    from .report import environment

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("cpu", args.vocab))
    if args.tune == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    ids = torch.Generator().manual_seed(0)

    def random_ids(n: int) -> list[int]:
        return torch.randint(3, args.vocab, (n,), generator=ids).tolist()

    features = [dict(prompt_input_ids=random_ids(args.prompt), chosen_input_ids=random_ids(args.answer),
                     rejected_input_ids=random_ids(args.answer - 5)) for _ in range(4)]
    batch = ORPODataCollator(pad_token_id=2, layout=BatchLayout(True, True))(features)
    fused = FusedLoss(0.1, *loss_scales(batch, True))  # the batch's own token and pair means
    chunked = adapter.chunked_token_logps

    def recomputing(*chunk_args, **chunk_kwargs):
        return chunked(*chunk_args, **{**chunk_kwargs, "recompute": True})

    ways = {"default": (512, fused, chunked), "checkpointed": (512, None, recomputing), "unchunked": (0, None, chunked)}

    growth = {way: 0 for way in ways}

    def step(way: str) -> float:
        chunk, spec, score = ways[way]
        before = rss_kb()
        reset_peak_rss()
        start = time.perf_counter()
        with mock.patch.object(adapter, "chunked_token_logps", score):  # where score_hidden looks it up
            out = concatenated_forward(model, batch, loss_chunk_size=chunk, fused=spec)
            loss = out.loss if out.loss is not None else orpo_loss(
                out.nll_loss, odds_ratio_loss(out.chosen_logps, out.rejected_logps, 0.1)[0])
            loss.backward()
        seconds = time.perf_counter() - start
        growth[way] = max(growth[way], max_rss_kb() - before)
        model.zero_grad(set_to_none=True)
        return seconds

    for way in ways:
        step(way)
    times = {way: [] for way in ways}
    for _ in range(args.steps):
        for way in ways:
            times[way].append(step(way))
    median = {way: round(statistics.median(t), 3) for way, t in times.items()}
    print(json.dumps({"command": "python -m benchmarks.loss_step " + " ".join(argv if argv is not None else sys.argv[1:]),
                      "environment": environment("cpu"), "settings": vars(args), "threads": torch.get_num_threads(),
                      "median_step_s": median,
                      "peak_growth_mib": {way: round(kb / 1024) for way, kb in growth.items()},
                      "checkpointed_over_default": round(median["checkpointed"] / median["default"], 2)}))


if __name__ == "__main__":
    main()
