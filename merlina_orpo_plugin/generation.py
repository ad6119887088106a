"""Generations at evaluation: the policy samples answers to fixed eval prompts, shown beside chosen and rejected.

Preference training fails in ways the loss hides until training is over: answers drifting longer,
the model copying the chosen answers' style, collapse at a high beta. At each evaluation the
trainer calls `log_generations`: every process samples the same ``num_generation_samples`` eval prompts (the
first rows of the eval set, so runs and steps compare) with one seed, so the processes run the same
number of forward passes (FSDP and ZeRO-3 shard every forward: a process that stopped early would
hang the others); the main process then writes the rows, with the sample's mean token log-prob under
the policy, to a JSONL in ``output_dir`` (always), to W&B as a table and to TensorBoard as text
(when those trackers run).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from .batch.collator import pad_id_of

JSONL_NAME = "eval_generations.jsonl"
COLUMNS = ("step", "prompt", "chosen", "rejected", "sample", "sample_mean_logp")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    temperature: float
    seed: int


def log_generations(trainer, dataset, prefix: str) -> None:
    """At an evaluation of ``trainer``: every process samples the same prompts, the main one writes them."""
    options = trainer.settings
    rows = [dataset[i] for i in range(min(options.num_generation_samples, len(dataset)))]
    if not rows:
        return
    settings = GenerationSettings(options.generation_max_new_tokens,
                                  options.generation_temperature, trainer.args.seed)
    model = trainer.accelerator.unwrap_model(trainer.model)
    sampled = sample_rows(model, trainer.processing_class, rows, settings, trainer.state.global_step)
    if trainer.is_world_process_zero():
        write_rows(sampled, trainer.args.output_dir, trainer.callback_handler.callbacks, prefix=prefix)


@torch.no_grad()
def sample_rows(model, tokenizer, rows: list[dict], settings: GenerationSettings, step: int) -> list[dict]:
    """Sample one answer per prompt of ``rows`` (tokenised pairs) and score it under ``model``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = pad_id_of(tokenizer)
    prompts = [list(row["prompt_input_ids"]) for row in rows]
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # left-padded
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed + step)  # the same samples on every process, a new draw per step
        generated = model.generate(
            input_ids=ids, attention_mask=attention, max_new_tokens=settings.max_new_tokens, do_sample=True,
            temperature=settings.temperature, top_k=0, top_p=1.0, pad_token_id=pad,
        )
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    # A decoder-only model continues the prompt; an encoder-decoder's output starts at its decoder start.
    continuations = generated[:, 1:] if seq2seq else generated[:, width:]
    out = []
    for row, prompt, full in zip(rows, prompts, continuations.tolist()):
        sample = _until_end(full, tokenizer.eos_token_id, pad)
        out.append({
            "step": step,
            "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
            "chosen": tokenizer.decode(row["chosen_input_ids"], skip_special_tokens=False),
            "rejected": tokenizer.decode(row["rejected_input_ids"], skip_special_tokens=False),
            "sample": tokenizer.decode(sample, skip_special_tokens=False),
            "sample_mean_logp": _mean_logp(model, prompt, sample, device, seq2seq),
        })
    model.train(was_training)
    return out


def _until_end(tokens: list[int], eos: int | None, pad: int) -> list[int]:
    """The sampled tokens up to and including the first EOS (generate pads finished rows after it)."""
    if eos is not None and eos in tokens:
        return tokens[: tokens.index(eos) + 1]
    return tokens if pad == eos else [t for t in tokens if t != pad]


def _mean_logp(model, prompt: list[int], sample: list[int], device, seq2seq: bool) -> float:
    """Mean log-prob of the sample's tokens given the prompt, under ``model``."""
    if not sample:
        return float("nan")
    targets = torch.tensor(sample, device=device)
    if seq2seq:
        start = model.config.decoder_start_token_id
        decoder = torch.tensor([[start] + sample[:-1]], device=device)
        logits = model(input_ids=torch.tensor([prompt], device=device), decoder_input_ids=decoder).logits[0]
    else:
        ids = torch.tensor([prompt + sample], device=device)
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return float(torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).mean())


def write_rows(rows: list[dict], output_dir: str, callbacks, prefix: str = "eval") -> None:
    """Append ``rows`` to the JSONL in ``output_dir``, log a W&B table and TensorBoard text if they run."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, JSONL_NAME), "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    try:
        import wandb
    except ImportError:
        wandb = None
    if wandb is not None and wandb.run is not None:
        table = wandb.Table(columns=list(COLUMNS), data=[[row[c] for c in COLUMNS] for row in rows])
        wandb.log({f"{prefix}/generations": table})
    for callback in callbacks:
        writer = getattr(callback, "tb_writer", None)
        if writer is not None:
            writer.add_text(f"{prefix}/generations", _markdown(rows), global_step=rows[0]["step"] if rows else 0)
            writer.flush()


def _markdown(rows: list[dict]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
