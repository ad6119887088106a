"""Encoder-decoder ORPO (T5, BART built from their configs) against TRL 1.9's `is_encoder_decoder` path.

Both tokenise the same text pairs (prompt into the encoder, each completion as decoder labels, the
tokenizer's own special tokens on each): the ids, the loss, every metric and the gradients must
agree, in float32. Ours encodes each prompt once; TRL encodes it twice.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from trl.experimental import orpo as trl_orpo  # the test oracle (installed by make test)

from merlina_orpo_plugin import MerlinaORPOTrainer
from testkit import generation_rows, orpo_args, seq2seq_tokenizer, tiny_bart, tiny_t5

METRICS = ("loss", "nll_loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected", "log_odds_ratio", "log_odds_chosen")
PAD, BOS, EOS = 0, 1, 2  # SmolLM2's <|endoftext|>, <|im_start|>, <|im_end|>


def _pairs() -> Dataset:
    topics = ["tides", "volcanoes", "bread", "bees", "glass", "comets"]
    return Dataset.from_list([
        {"prompt": f"Explain {t} in one short sentence.", "chosen": f"{t.capitalize()} follow simple physics.",
         "rejected": f"I would rather not talk about {t} today, sorry."}
        for t in topics
    ])


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_encoder_decoder_loss_metrics_and_gradients_match_trl(tmp_path, family):
    model = tiny_t5() if family == "t5" else tiny_bart()
    tok = seq2seq_tokenizer(bos=family == "bart")
    common = dict(beta=0.2, max_length=128, max_completion_length=64, per_device_eval_batch_size=3,
                  report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0)
    theirs = trl_orpo.ORPOTrainer(model=copy.deepcopy(model), args=trl_orpo.ORPOConfig(output_dir=str(tmp_path / "trl"),
                                  **common), train_dataset=_pairs(), eval_dataset=_pairs(), processing_class=tok)
    ours = MerlinaORPOTrainer(model=copy.deepcopy(model), args=orpo_args(tmp_path / "ours", **common),
                              eval_dataset=_pairs(), processing_class=tok)
    assert ours.speed.layout.encoder_decoder and ours.speed.loss_chunk_size == 0
    rows = theirs.eval_dataset  # the same ids: the prompt and each completion with the tokenizer's own specials
    assert all(r["chosen_labels"][-1] == EOS for r in rows) and (family == "t5") == (rows[0]["prompt_input_ids"][0] != BOS)
    assert ours.eval_dataset["prompt_input_ids"] == rows["prompt_input_ids"]
    assert ours.eval_dataset["chosen_input_ids"] == rows["chosen_labels"]
    assert ours.eval_dataset["rejected_input_ids"] == rows["rejected_labels"]

    mine, reference = ours.evaluate(), theirs.evaluate()
    for name in METRICS:
        assert mine[f"eval_{name}"] == pytest.approx(reference[f"eval_{name}"], rel=1e-5, abs=1e-6), name

    def gradients(trainer, batch):
        """The gradients of one batch's loss, and the rows of each encoder call it made."""
        encoded = []

        def record(module, args, kwargs):
            encoded.append((kwargs["input_ids"] if "input_ids" in kwargs else args[0]).shape[0])

        hook = trainer.model.get_encoder().register_forward_pre_hook(record, with_kwargs=True)
        try:
            trainer.model.zero_grad()
            trainer.model.train()
            trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)).backward()
        finally:
            hook.remove()
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}, encoded

    pairs = common["per_device_eval_batch_size"]  # the first eval batch: 3 of the 6 pairs
    got, ours_encoded = gradients(ours, next(iter(ours.get_eval_dataloader())))
    expected, trl_encoded = gradients(theirs, next(iter(theirs.get_eval_dataloader())))
    assert ours_encoded == [pairs] and trl_encoded == [2 * pairs]  # each prompt encoded once; TRL: chosen + rejected
    assert got.keys() == expected.keys() and got
    largest = max(g.abs().max() for g in expected.values())
    for name in got:
        # Key-projection biases get an exactly-zero gradient in exact arithmetic (softmax ignores a
        # shift shared by a row), so theirs is rounding noise: measure against the largest gradient.
        scale = max(expected[name].abs().max(), 1e-3 * largest)
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5 * scale, msg=name)


def test_generations_at_evaluation_work_for_an_encoder_decoder(tmp_path):
    import math

    tok = seq2seq_tokenizer()
    args = orpo_args(tmp_path, generate_during_eval=True, num_generation_samples=2, generation_max_new_tokens=4)
    trainer = MerlinaORPOTrainer(model=tiny_t5(), args=args, eval_dataset=_pairs(), processing_class=tok)
    trainer.evaluate()
    rows = generation_rows(tmp_path)
    assert len(rows) == 2 and rows[0]["prompt"].startswith("Explain tides")
    assert all(row["sample"] and math.isfinite(row["sample_mean_logp"]) for row in rows)
    assert all(row["sample_mean_logp"] < 0 for row in rows)  # a mean log-prob of sampled tokens
