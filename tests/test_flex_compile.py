"""FlexAttention's compilations stay bounded: `evaluate()` over batches of many widths, and train/eval switches.

Checks the number of graphs TorchDynamo compiles for a tiny Llama loaded with
``attn_implementation="flex_attention"``, forward only, on CPU (FlexAttention has no CPU backward), against
fixed bounds. transformers compiles FlexAttention through ``WrappedFlexAttention``, which calls
``torch.compile(flex_attention)`` again whenever training and evaluation alternate. The backend here is
a counting one that runs the captured graph eagerly (inductor takes over a minute per compile on CPU);
recompiles are TorchDynamo's decision (its guards), made before any backend runs. Like inductor's
wrappers (``_TorchCompileInductorWrapper.__eq__``: same mode, options and dynamic), every backend object
made here compares equal to the others, so a new ``torch.compile`` reuses the graphs of an earlier one
exactly as it does with inductor.

Rounding packed widths up to FlexAttention's 128-token block would save one of the three graphs (the
block-padded closure tensors would then change with the sequence length) but, over 24 batches of 23
widths, ran 10,112 positions instead of 8,488 (+19% processed tokens, for the same loss): the widths
are left as packed.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from testkit import orpo_args, single_turn_pairs, tiny_llama
from merlina_orpo_plugin import MerlinaORPOTrainer

#: Static shapes for the first batch; the second width makes the sequence length dynamic (TorchDynamo's
#: automatic dynamic shapes); the first change in the number of 128-token blocks makes the tensors the
#: block mask's ``mask_mod`` closes over (segment ids padded to whole blocks, `compute.attention.block_mask`)
#: dynamic too. Every width after that reuses the graph. Measured with inductor too (TORCH_LOGS=recompiles):
#: the same 3 graphs, for the same two guard failures.
MOST_COMPILATIONS = 3


class _CompileCounter:
    """Stands in for ``torch.compile``: each call gets a new backend object (as each ``torch.compile``
    call gets a new inductor wrapper), all of them equal; ``graphs`` counts the graphs they compiled."""

    def __init__(self, real_compile):
        self.real_compile, self.graphs, self.calls = real_compile, 0, 0

    def __call__(self, fn=None, **kwargs):
        self.calls += 1
        kwargs.pop("mode", None)
        return self.real_compile(fn, backend=_CountingBackend(self), **kwargs)


class _CountingBackend:
    def __init__(self, counter: _CompileCounter):
        self.counter = counter

    def __eq__(self, other) -> bool:
        return isinstance(other, _CountingBackend)

    def __hash__(self) -> int:
        return 0

    def __call__(self, graph_module, example_inputs):
        self.counter.graphs += 1
        return graph_module.forward


def _pairs_of_many_widths(n: int) -> Dataset:
    """``n`` pairs whose prompts grow by about 37 characters each: for 20, 10 packed batches of 10 widths."""
    rows = single_turn_pairs(n)
    return Dataset.from_list([dict(row, prompt=(row["prompt"] * (1 + i % 7))[: 30 + 37 * i]) for i, row in enumerate(rows)])


@pytest.fixture(scope="module")
def flex_run(tmp_path_factory, tokenizer):
    """A trainer over a flex-attention tiny Llama, ``torch.compile`` counted, after its first `evaluate()`."""
    from transformers.integrations.flex_attention import WrappedFlexAttention

    with pytest.MonkeyPatch.context() as patch:
        counter = _CompileCounter(torch.compile)
        torch._dynamo.reset()
        patch.setattr(WrappedFlexAttention, "_instance", None)  # its compiled function: made again, counted
        patch.setattr(WrappedFlexAttention, "_is_flex_compiled", False)
        patch.setattr(torch, "compile", counter)
        pairs = _pairs_of_many_widths(20)
        model = tiny_llama(attn_implementation="flex_attention")
        args = orpo_args(tmp_path_factory.mktemp("flex"), per_device_eval_batch_size=2)
        trainer = MerlinaORPOTrainer(model=model, args=args, train_dataset=pairs, eval_dataset=pairs,
                                     processing_class=tokenizer)
        widths = [batch["input_ids"].shape[1] for batch in trainer.get_eval_dataloader()]
        first = trainer.evaluate()
        yield trainer, counter, widths, first, counter.graphs
        torch._dynamo.reset()  # no counted graphs left for later tests


def test_evaluation_over_many_widths_compiles_at_most_three_times(flex_run):
    """10 batches of 10 widths (145 to 503 tokens, 2 to 4 blocks): at most 3 graphs; a second pass compiles nothing."""
    trainer, counter, widths, first, after_first = flex_run
    assert len(set(widths)) == len(widths) == 10
    assert 1 <= after_first <= MOST_COMPILATIONS
    again = trainer.evaluate()
    assert counter.graphs == after_first
    assert again["eval_loss"] == first["eval_loss"]


def test_switching_to_training_and_back_does_not_recompile(flex_run):
    """A train-mode forward between two evaluations makes transformers call ``torch.compile`` again (to
    train mode, and back), but TorchDynamo keeps the graphs: the backends compare equal and the inputs
    pass the same guards (no gradients: CPU FlexAttention has no backward, so a train-mode forward
    with gradients, whose graph differs, can only be counted on a GPU)."""
    trainer, counter, _widths, first, after_first = flex_run
    batch = next(iter(trainer.get_train_dataloader()))
    calls = counter.calls
    trainer.model.train()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    metrics = trainer.evaluate()
    assert counter.calls == calls + 2  # transformers' wrapper called torch.compile again on each switch
    assert counter.graphs == after_first
    assert metrics["eval_loss"] == first["eval_loss"]
