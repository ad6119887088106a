"""The ORPO loss the two ways the checks compare: ours (`merlina_orpo_plugin.compute.objective`) on our collated
batch, and TRL 1.9's ``ORPOTrainer`` loss path on its padded batch (a trainer stub, no ``__init__``)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from .workload import BETA, PAD


def collate(features, shared: bool, packed: bool) -> dict:
    from merlina_orpo_plugin.batch.collator import ORPODataCollator
    from merlina_orpo_plugin.batch.packing import BatchLayout

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
    trainer.is_encoder_decoder, trainer.padding_value, trainer.label_pad_token_id = False, PAD, -100
    trainer.aux_loss_enabled, trainer.aux_loss_coef, trainer.beta = False, 0.0, BETA
    trainer.accelerator = SimpleNamespace(device=torch.device(device), gather_for_metrics=lambda x: x)
    return trainer


def ours_loss(model, batch, chunk, fused=False):
    """(loss, chosen logps, rejected logps, nll) of `orpo_objective` (its fused mode with ``fused``)."""
    from merlina_orpo_plugin.compute.forward import ORPOForwardOutput
    from merlina_orpo_plugin.compute.objective import LossSpec, orpo_objective

    step = orpo_objective(model, batch, LossSpec(BETA, loss_chunk_size=chunk, fused=fused))
    out = ORPOForwardOutput.of(step.scores)
    return step.loss, out.chosen_logps, out.rejected_logps, out.nll_loss


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
