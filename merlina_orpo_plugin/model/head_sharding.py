"""The chunked loss under FSDP2 and DeepSpeed ZeRO-3: how the head is sharded, found once per wrapped model.

The chunked loss calls the LM head after the model's forward has returned (`compute.head.score_hidden`).
Three things then go wrong under parameter sharding, and this module fixes them:

* FSDP2 (`fully_shard`, what accelerate and Axolotl apply for `fsdp_version: 2`) wraps the
  decoder layers and the root model; up to accelerate 1.13 the head, the final norm and the
  embeddings belong to the root unit. Set to reshard after forward (accelerate passes
  `reshard_after_forward` explicitly), the root's weights are DTensor shards by the time the head
  is called ("aten.mm.default got mixed torch.Tensor and DTensor"), and since the loss reaches the
  model through the captured hidden states rather than through an output of the root, FSDP's
  pre-backward hook never gathers them again for backward. `compute.head.whole_head` all-gathers
  the head's enclosing FSDP units (`FSDPModule.unshard`) before the chunks; FSDP's end-of-backward
  callback then reduce-scatters their gradients and reshards them as usual. Without a backward
  (evaluation) they are resharded on exit.
* In accelerate 1.15 and 1.16 (`fsdp2_prepare_model`) the head is an FSDP2 unit itself: grouped with
  the final norm where accelerate finds it (`fully_shard([norm, lm_head])`; tied: the input
  embeddings too), else alone, and kept unsharded after forward (a head in
  `fsdp_transformer_layer_cls_to_wrap` is its own unit too). Called through that unit's hooks after
  the forward, each chunk starts a new forward pass of the unit, which hooks the unit's
  post-backward to the chunk's input: in backward it fires right after that chunk, before the norm's
  backward, and reshards the unit, freeing the norm's weight the norm's backward still reads
  (SIGSEGV on CPU; torch 2.13 to 2.15 alike). And a frozen head's gradients, which `scoring` takes
  in the forward, would run FSDP's backward hooks and end-of-backward callback in the middle of the
  forward, resharding every unit. So `whole_head` unshards the head's own unit like the enclosing
  ones and calls the head through its ``forward`` (`_WithoutUnitHooks`); the unit's post-backward
  (hooked to the norm's input in the model's forward, or FSDP's end-of-backward callback)
  reduce-scatters the head's and the norm's gradients once and reshards the unit.
* Where the head's weight is gathered on every call of a module (DeepSpeed ZeRO-3, or FSDP2 units
  inside the head, e.g. its LoRA adapters), each chunk is a collective. Ranks score different
  numbers of tokens, so with fixed-size chunks they would make different numbers of calls and the
  collectives would pair up wrongly (gloo: "Received data size doesn't match expected size";
  NCCL: a hang). `compute.head.equal_chunk_count` makes every rank use the same count. FSDP2 units
  inside the head also register backward hooks on each call, so `gradients_in_forward_allowed` says
  no: the chunks are checkpointed instead.

This module finds what that needs to know about the model once per wrapped model (`find_head_sharding`,
one walk of its modules when `model.adapter.ModelFacts` are built). `compute.head` runs the head with it;
a step only asks each unit whether its parameters are shards right now.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _fsdp_module_class():
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return None
    return FSDPModule


def _enclosing_units(model: torch.nn.Module, head: torch.nn.Module) -> list[torch.nn.Module]:
    """FSDP2 units strictly above ``head`` in ``model`` (the root first)."""
    fsdp_module = _fsdp_module_class()
    if fsdp_module is None:
        return []
    named = list(model.named_modules())
    head_name = next((name for name, module in named if module is head), None)
    if head_name is None:
        return []
    return [
        module for name, module in named
        if isinstance(module, fsdp_module) and module is not head
        and (name == "" or head_name.startswith(name + "."))
    ]


def _own_modules(unit: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """The unit and the modules under it that are not inside another FSDP unit: those holding its parameters."""
    fsdp_module = _fsdp_module_class()
    found, stack = [], [unit]
    while stack:
        module = stack.pop()
        found.append(module)
        stack.extend(child for child in module.children() if not isinstance(child, fsdp_module))
    return tuple(found)


def _is_unit(module: torch.nn.Module) -> bool:
    fsdp_module = _fsdp_module_class()
    return fsdp_module is not None and isinstance(module, fsdp_module)


class _WithoutUnitHooks(torch.nn.Module):
    """``head`` called through its ``forward``: the forward hooks of its FSDP2 unit do not run.

    Its parameters are the head's (what the chunked loss trains); modules inside it run as usual.
    """

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head.forward(hidden)


@dataclass(frozen=True, eq=False)
class HeadSharding:
    """How the LM head's weights are split across processes, found once per wrapped model.

    ``units``: the FSDP2 units to unshard around the head's calls, each with the modules holding its
    own parameters (`_own_modules`): those enclosing the head (the root first), then the head's own
    unit. ``call``: what to call as the head (a head that is an FSDP2 unit: `_WithoutUnitHooks`).
    ``per_call``: each head call is a collective (ZeRO-3 partitioned weights, or FSDP2 units inside
    the head). ``units_inside``: FSDP2 units inside the head (not the head's own) run on a head call.
    ``sharded``: the head's weights are split (FSDP2 units above, at or in it, or ZeRO-3).
    """

    units: tuple[tuple[torch.nn.Module, tuple[torch.nn.Module, ...]], ...]
    call: torch.nn.Module
    per_call: bool
    units_inside: bool
    sharded: bool

    @property
    def gradients_in_forward_allowed(self) -> bool:
        """Whether `compute.kernels` may take a frozen head's gradients in the forward: not where head calls
        run FSDP2 units' hooks (their backward hooks and FSDP's end-of-backward callback would run then)."""
        return not self.units_inside


def find_head_sharding(model: torch.nn.Module, head: torch.nn.Module) -> HeadSharding:
    """``head``'s `HeadSharding` in the wrapped ``model``: one walk of ``model``'s modules, done once per model."""
    enclosing = _enclosing_units(model, head) if torch.distributed.is_available() else []
    head_unit = _is_unit(head)
    units = enclosing + [head] if head_unit else enclosing
    inside = any(_is_unit(module) for module in head.modules() if module is not head)
    per_call = any(hasattr(p, "ds_status") for p in head.parameters()) or inside  # DeepSpeed ZeRO-3
    return HeadSharding(
        units=tuple((unit, _own_modules(unit)) for unit in units),
        call=_WithoutUnitHooks(head) if head_unit else head,
        per_call=per_call,
        units_inside=inside,
        sharded=per_call or head_unit or bool(enclosing),
    )
