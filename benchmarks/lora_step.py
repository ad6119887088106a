"""Step time of a LoRA model (head frozen) with each way of computing the loss.

    python -m benchmarks.lora_step [--vocab 49152] [--prompt 320] [--answer 40] [--steps 5]

A ``cpu``-size Llama from ``benchmarks.model`` with LoRA (r 16) on the attention projections, one
batch of 4 random pairs (prompt ``--prompt`` tokens, answers ``--answer`` and ``--answer - 5``),
shared prompt and packing on; forward + backward of the ORPO loss, median of ``--steps`` after one
warm-up, the three ways interleaved step by step so machine load hits each alike:

* ``frozen``: the chunked loss (512 tokens) as it runs for a frozen head: each chunk's gradient
  kept from the forward (`merlina_orpo_plugin.scoring._FrozenHeadLogps`);
* ``checkpointed``: the chunked loss as it runs for a trained head (``recompute=True``): each chunk
  recomputed in backward;
* ``unchunked``: ``loss_chunk_size=0``, the model's full logits.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lora_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--prompt", type=int, default=320)
    p.add_argument("--answer", type=int, default=40)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)

    import peft
    import torch
    from transformers import LlamaForCausalLM

    import merlina_orpo_plugin.scoring as scoring
    from merlina_orpo_plugin.collator import ORPODataCollator
    from merlina_orpo_plugin.packing import BatchLayout
    from merlina_orpo_plugin.forward import concatenated_forward
    from merlina_orpo_plugin.losses import odds_ratio_loss, orpo_loss

    from .model import llama_config

    torch.manual_seed(0)
    lora = peft.LoraConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = peft.get_peft_model(LlamaForCausalLM(llama_config("cpu", args.vocab)), lora)
    ids = torch.Generator().manual_seed(0)

    def random_ids(n: int) -> list[int]:
        return torch.randint(3, 49152, (n,), generator=ids).tolist()

    features = [dict(prompt_input_ids=random_ids(args.prompt), chosen_input_ids=random_ids(args.answer),
                     rejected_input_ids=random_ids(args.answer - 5)) for _ in range(4)]
    batch = ORPODataCollator(pad_token_id=2, layout=BatchLayout(True, True))(features)
    chunked = scoring.chunked_token_logps
    checkpointed = functools.partial(chunked, recompute=True)  # the trained-head path, forced for this frozen head
    ways = {"frozen": (chunked, 512), "checkpointed": (checkpointed, 512), "unchunked": (chunked, 0)}

    def step(way: str) -> float:
        scoring.chunked_token_logps, chunk = ways[way]
        start = time.perf_counter()
        out = concatenated_forward(model, batch, loss_chunk_size=chunk)
        orpo_loss(out.nll_loss, odds_ratio_loss(out.chosen_logps, out.rejected_logps, 0.1)[0]).backward()
        model.zero_grad()
        return time.perf_counter() - start

    try:
        for way in ways:
            step(way)
        times = {way: [] for way in ways}
        for _ in range(args.steps):
            for way in ways:
                times[way].append(step(way))
    finally:
        scoring.chunked_token_logps = chunked
    from .report import environment

    median = {way: round(statistics.median(t), 3) for way, t in times.items()}
    print(json.dumps({"command": "python -m benchmarks.lora_step " + " ".join(argv if argv is not None else sys.argv[1:]),
                      "environment": environment("cpu"), "settings": vars(args), "threads": torch.get_num_threads(),
                      "median_step_s": median,
                      "checkpointed_over_frozen": round(median["checkpointed"] / median["frozen"], 2)}))


if __name__ == "__main__":
    main()
