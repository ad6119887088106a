"""Held-out preference accuracy: the share of pairs whose chosen answer the model scores above the rejected one.

    python examples/demo/preference_accuracy.py --model DIR --data FILE [--json OUT]
    python examples/demo/preference_accuracy.py --model DIR --adapter DIR [--compare-base] --data FILE

A pair counts as preferred when the chosen completion's mean per-token log-probability beats the
rejected one's: ``log P_theta(y|x)``, the length-normalised likelihood that ORPO's odds ratio is
built from (arXiv:2403.07691). Scoring runs the project's own pipeline, so it sees exactly what
training sees: ``prepare_preference_dataset`` (chat template, prompt split, BOS/EOS),
``ORPODataCollator`` and ``concatenated_forward``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch


@dataclass(frozen=True)
class PreferenceScores:
    """Per-pair mean completion log-probs, in the input order, and their summary."""

    chosen_logps: list[float]
    rejected_logps: list[float]

    @property
    def pairs(self) -> int:
        return len(self.chosen_logps)

    @property
    def correct(self) -> int:
        # Strictly greater: a tie (e.g. identical answers) is not a preference.
        return sum(c > r for c, r in zip(self.chosen_logps, self.rejected_logps))

    @property
    def accuracy(self) -> float:
        return self.correct / self.pairs if self.pairs else float("nan")

    @property
    def mean_margin(self) -> float:
        margins = [c - r for c, r in zip(self.chosen_logps, self.rejected_logps)]
        return sum(margins) / len(margins) if margins else float("nan")

    def summary(self) -> dict:
        def mean(values: list[float]) -> float:
            return sum(values) / len(values) if values else float("nan")

        return {
            "pairs": self.pairs,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "mean_margin": self.mean_margin,
            "mean_chosen_logp": mean(self.chosen_logps),
            "mean_rejected_logp": mean(self.rejected_logps),
        }


def score_pairs(
    model: torch.nn.Module,
    tokenizer,
    pairs: list[dict],
    *,
    batch_size: int = 8,
    max_length: int | None = 512,
    max_prompt_length: int | None = 256,
) -> PreferenceScores:
    """Mean completion log-probs of every pair's chosen and rejected answer under ``model``.

    ``pairs`` are rows in any layout ``prepare_preference_dataset`` accepts. Pairs are batched
    by length (less padding, same numbers: padding is masked out) and returned in input order.
    The model is put in eval mode (no dropout) and left there.
    """
    import datasets

    from merlina_orpo_plugin import ORPODataCollator, prepare_preference_dataset
    from merlina_orpo_plugin.forward import concatenated_forward

    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    tokenised, _ = prepare_preference_dataset(
        datasets.Dataset.from_list(pairs), tokenizer, max_length=max_length, max_prompt_length=max_prompt_length
    )
    rows = tokenised.to_list()
    collate = ORPODataCollator(tokenizer)
    order = sorted(range(len(rows)), key=lambda i: _longest(rows[i]))
    chosen, rejected = [0.0] * len(rows), [0.0] * len(rows)
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in indices]).items()}
            out = concatenated_forward(model, batch)
            for i, c, r in zip(indices, out.chosen_logps.tolist(), out.rejected_logps.tolist(), strict=True):
                chosen[i], rejected[i] = c, r
    return PreferenceScores(chosen, rejected)


def _longest(row: dict) -> int:
    return len(row["prompt_input_ids"]) + max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"line {number} of {path}: not JSON ({error.msg})") from error
    if not rows:
        raise ValueError(f"{path} holds no pairs")
    return rows


def load_model(model_dir: Path, adapter_dir: Path | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    return model, tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="base model folder")
    parser.add_argument("--adapter", type=Path, help="PEFT (LoRA) adapter folder to apply on top of the model")
    parser.add_argument(
        "--compare-base",
        action="store_true",
        help="with --adapter: also score the base model (adapter disabled) in the same process, "
        "which saves a second start-up and model load",
    )
    parser.add_argument("--data", type=Path, required=True, help="JSON-lines preference pairs")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward (2x rows)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.compare_base and args.adapter is None:
        parser.error("--compare-base needs --adapter")

    pairs = read_jsonl(args.data)
    model, tokenizer = load_model(args.model, args.adapter)
    runs = []
    if args.compare_base:
        with model.disable_adapter():
            runs.append(("base model", score_pairs(model, tokenizer, pairs, batch_size=args.batch_size)))
    label = f"with adapter {args.adapter}" if args.adapter else "base model"
    runs.append((label, score_pairs(model, tokenizer, pairs, batch_size=args.batch_size)))

    print(f"held-out preference accuracy of {args.model} on {args.data}:")
    for label, scores in runs:
        s = scores.summary()
        print(
            f"  {label}: preference accuracy {s['accuracy']:.3f} ({s['correct']}/{s['pairs']} pairs), "
            f"mean margin {s['mean_margin']:+.3f} nats/token "
            f"(chosen {s['mean_chosen_logp']:.3f}, rejected {s['mean_rejected_logp']:.3f})"
        )
    if args.json:
        result = {
            "model": str(args.model),
            "adapter": str(args.adapter) if args.adapter else None,
            "data": str(args.data),
            "runs": [{"label": label, **scores.summary(), "scores": asdict(scores)} for label, scores in runs],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
