"""Every loss term, metric and batch tensor stays on the model's device: checked on the `meta` device.

On a GPU a tensor made without a device lands on the CPU, and `torch.stack` / `torch.cat` of CPU and
CUDA tensors raises. The `meta` device follows the same rule (a CPU tensor beside meta ones fails the
same ops), so running the trainer's own loss and metric code with the model and the batch on `meta`
finds, without a GPU, the bug that crashed the first CUDA run at its first log
(`tokens/processed_per_unique` was built on the CPU). Nothing on `meta` can be read back, so this also
proves the step makes no host sync through `.item()`, `int()` or `.tolist()` before the log.
"""

from __future__ import annotations

import pytest
import torch

from testkit import orpo_args, tiny_llama

META = torch.device("meta")
# (prompt, chosen, rejected) token ids: mixed lengths, so the packed layout holds several pairs per row.
PAIRS = [
    ([1, 11, 12, 13, 14], [21, 22, 2], [31, 32, 33, 34, 2]),
    ([1, 15, 16], [23, 24, 25, 26, 2], [35, 2]),
    ([1, 17, 18, 19, 20, 21, 22], [27, 2], [36, 37, 38, 2]),
    ([1, 40], [41, 42, 43, 2], [44, 45, 2]),
]
LAYOUTS = {"padded": (False, False), "shared prompt": (True, False), "packed": (True, True)}
# (layout, attention). The padded layout hands transformers a 2D padding mask, and its sdpa mask
# builder reads it back (`.item()`, to skip the mask when nothing is padded): a sync of transformers'
# own that `meta` cannot run, so the padded layout is checked under eager attention, whose mask
# builder does not read it. Shared and packed rows carry our own 4D mask under both.
CASES = [("padded", "eager"), ("shared prompt", "sdpa"), ("shared prompt", "eager"), ("packed", "sdpa"),
         ("packed", "eager")]


def _features():
    return [{"prompt_input_ids": p, "chosen_input_ids": c, "rejected_input_ids": r} for p, c, r in PAIRS]


def _on(device: torch.device, batch):
    return batch.to(device)


def _off_device(tensors: dict[str, torch.Tensor], device: torch.device) -> list[str]:
    return [f"{name} on {value.device}" for name, value in tensors.items() if value.device.type != device.type]


def _trainer(tmp_path, tokenizer, attention="sdpa", **speed):
    import datasets

    from merlina_orpo_plugin import MerlinaORPOTrainer

    rows = datasets.Dataset.from_list(_features())
    args = orpo_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, **speed)
    model = tiny_llama(attn_implementation=attention)
    return MerlinaORPOTrainer(model, args, train_dataset=rows, processing_class=tokenizer)


@pytest.mark.parametrize("chunk", [0, 8], ids=["full logits", "chunked loss"])
@pytest.mark.parametrize("layout,attention", CASES)
def test_loss_metrics_and_accumulation_window_stay_on_the_model_device(tmp_path, tokenizer, layout, attention, chunk):
    prefix_sharing, padding_free = LAYOUTS[layout]
    trainer = _trainer(tmp_path, tokenizer, attention, prefix_sharing=prefix_sharing, padding_free=padding_free,
                       loss_chunk_size=chunk)
    with META:
        meta_model = type(trainer.model)(trainer.model.config)
    features = _features()
    batches = [_on(META, trainer.data_collator(features[:2])), _on(META, trainer.data_collator(features[2:]))]

    # Training: the accumulation window is counted on the device, then each micro-batch's loss.
    samples, num_items = trainer.get_batch_samples(iter(batches), 2, META)
    assert num_items.device == META
    assert not _off_device({"window": trainer._orpo_window[0]}, META)
    for batch in samples:
        loss, outputs = trainer.compute_loss(meta_model, batch, return_outputs=True, num_items_in_batch=num_items)
        assert loss.device == META
        assert not _off_device(outputs, META)
    assert not _off_device(trainer._orpo_metrics._sums["train"], META)
    names, means = trainer._orpo_metrics.pop_tensor("train")
    assert "tokens/processed_per_unique" in names and means.device == META

    # Evaluation goes through the same loss under its own mode.
    with trainer._mode("eval"), torch.no_grad():
        trainer.compute_loss(meta_model, batches[0])
    assert not _off_device(trainer._orpo_metrics._sums["eval"], META)


def test_the_check_catches_a_metric_made_on_the_cpu(tmp_path, tokenizer):
    """Negative control: a metric built without a device (the original bug) is reported."""
    trainer = _trainer(tmp_path, tokenizer)
    with META:
        meta_model = type(trainer.model)(trainer.model.config)
    batch = _on(META, trainer.data_collator(_features()[:2]))
    trainer.compute_loss(meta_model, batch)
    trainer.store_metrics({"custom/from_python": 1.0})  # a float: stored as a CPU tensor
    sums = trainer._orpo_metrics._sums["train"]
    assert _off_device(sums, META) == ["custom/from_python on cpu"]
    with pytest.raises(RuntimeError, match="device"):
        torch.stack(list(sums.values()))
    # `pop` moves what a subclass stored to one device before stacking, so the log still works.
    names, means = trainer._orpo_metrics.pop_tensor("train")
    assert means.device == META and "custom/from_python" in names
