"""The collated batch travels as an `ORPOBatch`: ``.to()`` moves its tensors and keeps its host facts
(layout, scored-token counts), through accelerate's ``send_to_device`` and the trainer's input
preparation alike; a dict in the collator's shape still trains, with the same losses."""

from __future__ import annotations

import pytest
import torch

from merlina_orpo_plugin import ORPODataCollator
from merlina_orpo_plugin.batch.orpo_batch import ORPOBatch, as_batch
from merlina_orpo_plugin.batch.packing import BatchLayout
from testkit import orpo_args, tiny_llama

META = torch.device("meta")
PAIRS = [
    {"prompt_input_ids": [5, 6], "chosen_input_ids": [7, 2], "rejected_input_ids": [8, 9, 2], "merlina_row": 4},
    {"prompt_input_ids": [5, 6, 4], "chosen_input_ids": [3, 2], "rejected_input_ids": [2], "merlina_row": 9},
]


def _batch(layout=BatchLayout(True, True)) -> ORPOBatch:
    return ORPODataCollator(pad_token_id=0, layout=layout)(PAIRS)


def _intact(moved, batch: ORPOBatch, device: torch.device) -> None:
    assert type(moved) is ORPOBatch and moved is not batch
    assert moved.layout is batch.layout and moved.scored_counts == batch.scored_counts
    assert set(moved.tensors) == set(batch.tensors)
    assert all(t.device.type == device.type for t in moved.tensors.values())
    assert all(t.device.type == "cpu" for t in batch.tensors.values())  # the original is not moved


def test_counts_are_plain_ints_per_owner_and_no_value_fakes_a_tensor():
    batch = _batch()
    owners = batch["score_owner"].tolist()
    assert type(batch.scored_counts) is tuple and all(type(c) is int for c in batch.scored_counts)
    assert batch.scored_counts == tuple(owners.count(o) for o in range(6))
    assert batch["row_ids"].tolist() == [4, 9] and "row_ids" in batch and "labels" not in batch
    assert batch["layout"] is batch.layout and batch["scored_counts"] is batch.scored_counts
    assert all(torch.is_tensor(v) or not hasattr(v, "to") for v in batch.values())
    with pytest.raises(KeyError):
        batch["labels"]


def test_to_moves_the_tensors_and_keeps_the_host_facts():
    batch = _batch()
    _intact(batch.to(META), batch, META)
    _intact(batch.to(META, non_blocking=True), batch, META)


def test_send_to_device_keeps_the_batch_intact():
    from accelerate.utils import send_to_device

    batch = _batch()
    _intact(send_to_device(batch, META, non_blocking=True), batch, META)


@pytest.mark.gpu
def test_dataloader_pinning_keeps_the_batch_intact():
    """A DataLoader with ``pin_memory=True`` (Trainer's default) pins the batch's tensors, as it did a dict's."""
    from torch.utils.data._utils.pin_memory import pin_memory

    if not torch.cuda.is_available():
        pytest.skip("pinning host memory needs a CUDA GPU")
    batch = _batch()
    pinned = pin_memory(batch)
    assert type(pinned) is ORPOBatch and pinned.scored_counts == batch.scored_counts
    assert all(t.is_pinned() for t in pinned.tensors.values())


def test_a_dict_in_the_collators_shape_round_trips():
    batch = _batch()
    again = as_batch(dict(batch))
    assert again.layout is batch.layout and again.scored_counts == batch.scored_counts
    assert all(torch.equal(again[k], batch[k]) for k in batch.tensors)
    counted = as_batch({k: v for k, v in batch.items() if k != "scored_counts"})  # counted from score_owner
    assert counted.scored_counts == batch.scored_counts
    with pytest.raises(ValueError, match="no `layout`"):
        as_batch(dict(batch.tensors))


def _trainer(tmp_path, tokenizer, collator=None, **args):
    import datasets

    from merlina_orpo_plugin import MerlinaORPOTrainer

    rows = datasets.Dataset.from_list([{k: v for k, v in p.items() if k != "merlina_row"} for p in PAIRS * 2])
    return MerlinaORPOTrainer(tiny_llama(), orpo_args(tmp_path, **args), train_dataset=rows, eval_dataset=rows,
                              processing_class=tokenizer, data_collator=collator)


def test_trainer_moves_a_batch_itself_and_a_dict_through_trainer(tmp_path, tokenizer, monkeypatch):
    """Trainer's `_prepare_input` returns an unknown object unmoved; the ORPO trainer moves an
    `ORPOBatch` with its ``.to``; a dict goes through Trainer's own path, host values kept."""
    from transformers import Trainer

    trainer = _trainer(tmp_path, tokenizer)
    batch = trainer.data_collator(PAIRS)
    assert Trainer._prepare_input(trainer, batch) is batch
    monkeypatch.setattr(type(trainer.args), "device", property(lambda self: META))  # where inputs go
    _intact(trainer._prepare_inputs(batch), batch, META)
    moved = trainer._prepare_inputs(dict(batch))
    assert type(moved) is dict and moved["input_ids"].device == META
    assert moved["layout"] is batch.layout and moved["scored_counts"] == batch.scored_counts


def test_a_collator_returning_a_dict_trains_as_the_batch_does(tmp_path, tokenizer):
    losses = []
    for as_dict in (False, True):
        collator = ORPODataCollator(tokenizer)
        trainer = _trainer(tmp_path, tokenizer, (lambda f, c=collator: dict(c(f))) if as_dict else collator,
                           include_num_input_tokens_seen="all")
        trainer.train()
        losses.append([log["loss"] for log in trainer.state.log_history if "loss" in log])
        assert trainer.state.num_input_tokens_seen > 0  # Trainer finds ``input_ids`` in either
        assert "eval_nll_loss" in trainer.evaluate()
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-6)
