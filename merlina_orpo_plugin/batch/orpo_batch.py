"""One collated micro-batch as it travels: its tensors, and the facts about it that stay on the host.

`ORPODataCollator` returns an `ORPOBatch`. ``.to(device)`` moves the tensors only; the batch's
`BatchLayout` and its scored-token counts per owner are plain Python values, read without waiting
for the device. accelerate's ``send_to_device`` calls ``.to``; `transformers.Trainer` moves only
tensors, mappings and sequences, so the ORPO trainer moves an `ORPOBatch` itself (``_prepare_inputs``).

The batch reads like TRL's dict (``batch["input_ids"]``, ``"row_ids" in batch``, ``dict(batch)``),
the host facts under their own keys ``layout`` and ``scored_counts``; it is not a ``Mapping``, which
Trainer and accelerate would rebuild entry by entry. A dict in the collator's shape (``dict(batch)``,
a user's own collator) is taken where a batch is (`as_batch`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .packing import BatchLayout

#: The entries of the dict view that are host facts, not tensors.
HOST_KEYS = ("layout", "scored_counts")


@dataclasses.dataclass(frozen=True, eq=False)
class ORPOBatch:
    """``tensors``: the collator's tensors by name (see `ORPODataCollator`); ``layout``: the rows'
    `BatchLayout`; ``scored_counts``: scored tokens per owner (chosen ``i``, rejected ``B + i``,
    prompt ``2B + i``), ``3B`` ints, so the forward plans chunks of whole pairs without a device sync."""

    tensors: dict[str, torch.Tensor]
    layout: BatchLayout
    scored_counts: tuple[int, ...]

    def to(self, *args, **kwargs) -> ORPOBatch:
        """A new batch with every tensor moved by ``Tensor.to(*args, **kwargs)``; the host facts as they are."""
        return dataclasses.replace(self, tensors={k: v.to(*args, **kwargs) for k, v in self.tensors.items()})

    def pin_memory(self, device=None) -> ORPOBatch:
        """The batch in pinned host memory (what a DataLoader with ``pin_memory=True`` asks of it)."""
        pinned = {k: v.pin_memory() if device is None else v.pin_memory(device) for k, v in self.tensors.items()}
        return dataclasses.replace(self, tensors=pinned)

    # --- read access as a dict ----------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if key in self.tensors:
            return self.tensors[key]
        if key in HOST_KEYS:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __contains__(self, key: object) -> bool:
        return key in self.tensors or key in HOST_KEYS

    def keys(self) -> list[str]:
        return [*self.tensors, *HOST_KEYS]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.tensors) + len(HOST_KEYS)

    def items(self) -> list[tuple[str, Any]]:
        return [(key, self[key]) for key in self.keys()]

    def values(self) -> list[Any]:
        return [self[key] for key in self.keys()]


def as_batch(batch: ORPOBatch | Mapping[str, Any]) -> ORPOBatch:
    """``batch`` as an `ORPOBatch`: a dict in the collator's shape needs its ``layout``; without
    ``scored_counts`` they are counted from ``score_owner`` (a copy to the host)."""
    if isinstance(batch, ORPOBatch):
        return batch
    layout = batch.get("layout")
    if not isinstance(layout, BatchLayout):
        raise ValueError("the batch has no `layout`: collate ORPO batches with merlina_orpo_plugin.ORPODataCollator")
    tensors = {k: v for k, v in batch.items() if k not in HOST_KEYS}
    counts = batch.get("scored_counts")
    if counts is None:
        counts = owner_counts(tensors["score_owner"].tolist(), tensors["pair_lengths"].shape[0])
    return ORPOBatch(tensors, layout, tuple(int(c) for c in counts))


def owner_counts(owners: list[int], num_pairs: int) -> tuple[int, ...]:
    """Scored tokens per owner (``3 * num_pairs`` of them) from each scored token's owner."""
    counts = [0] * (3 * num_pairs)
    for owner in owners:
        counts[owner] += 1
    return tuple(counts)
