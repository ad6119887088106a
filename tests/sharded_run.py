"""Train `MerlinaORPOTrainer` a few steps on a tiny Llama and write what it logged as JSON.

Run by `test_sharded.py`: in the test process (1 process, the reference) and under
``torchrun --nproc_per_node 2 tests/sharded_run.py --out runs.json fsdp2:full zero3:lora ...``
(SHARDING:CASE, one after the other in the same processes), each rank taking half of the same
global batch. Everything is built in-process (a WordLevel
tokenizer, generated text pairs, a Llama from its config), so nothing is read from disk or a hub.
The chunked loss is on with 8-token chunks: several per micro-batch, and a different number on
each rank. The evaluation also samples generations (``generate_during_eval``) on every rank, which
the main process alone writes; the run returns the rows of that JSONL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit import generation_rows, tiny_llama  # noqa: E402  (tests/ is on sys.path from here)

GLOBAL_BATCH = 4
STEPS = 3
CHUNK = 8
LOGGED = ("loss", "nll_loss", "or_loss", "grad_norm", "log_odds_ratio", "rewards/chosen", "logps/rejected", "logits/chosen")
EVALUATED = ("eval_loss", "eval_nll_loss", "eval_rewards/chosen", "eval_logits/rejected")
GENERATIONS = 2  # eval prompts sampled at the evaluation
CASES = {
    # full fine-tune: the head is trained (checkpointed chunks), 2 micro-batches per step
    "full": dict(tied=False, lora=False, accumulation=2, wrap=["LlamaDecoderLayer"]),
    # LoRA on attention: the head is frozen (per-row gradients in the forward)
    "lora": dict(tied=False, lora=True, accumulation=1, wrap=["LlamaDecoderLayer"]),
    # tied embeddings, full fine-tune: the head's weight is the embedding's
    "tied": dict(tied=True, lora=False, accumulation=1, wrap=["LlamaDecoderLayer"]),
    # FSDP2 with every Linear its own unit, the head included: called without its unit's hooks
    "head_unit": dict(tied=False, lora=False, accumulation=1, wrap=["LlamaDecoderLayer", "Linear"]),
    # the final norm and the head in one unit, as accelerate >= 1.15 groups them, here resharded after forward
    "grouped": dict(tied=False, lora=False, accumulation=2, wrap=["LlamaDecoderLayer"], group_tail=True),
}
REFERENCE = {"head_unit": "full", "grouped": "full"}  # the 1-process run each case must match, if not its own

_WORDS = [f"w{i}" for i in range(90)]


def tokenizer():
    """A WordLevel tokenizer over the generated words, with bos/eos/pad, wrapped for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + _WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def pairs(n: int):
    """``n`` plain-text pairs of different lengths (prompt 6-15 words, answers 3-11)."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(1234)

    def text(length: int) -> str:
        return " ".join(_WORDS[i] for i in torch.randint(len(_WORDS), (length,), generator=generator).tolist())

    rows = [{"prompt": text(6 + i % 10), "chosen": text(3 + i % 7), "rejected": text(4 + (i * 5) % 8)} for i in range(n)]
    return Dataset.from_list(rows)


def model(tied: bool, group_tail: bool = False):
    """testkit's 2-layer Llama (seed 0, float32) over the WordLevel vocabulary, <pad> = 0.

    ``group_tail``: its final norm and head sharded as one FSDP2 unit (``fully_shard([norm, lm_head])``),
    resharded after forward. accelerate 1.15 and later group them so themselves (kept unsharded after
    forward); done here it runs on every accelerate, which leaves modules already sharded as they are.
    """
    network = tiny_llama(seed=0, dtype=torch.float32, vocab_size=4 + len(_WORDS), max_position_embeddings=256,
                         pad_token_id=0, tie_word_embeddings=tied)
    if group_tail:
        from torch.distributed.fsdp import fully_shard

        fully_shard([network.model.norm, network.lm_head], reshard_after_forward=True)
    return network


def allow_fsdp_on_cpu() -> None:
    """Let accelerate apply FSDP2 to CPU processes (gloo), as it does on GPUs.

    `AcceleratorState` only switches to FSDP on accelerator devices: on CPU it keeps `MULTI_CPU`
    and the Trainer silently runs DDP. This lifts that one gate (re-applied on every
    `AcceleratorState()`, which resets the type), so the model is sharded by accelerate's own
    `fsdp2_prepare_model`: `fully_shard` per wrapped class and on the root, DTensor parameters,
    gloo all-gather and reduce-scatter.
    """
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_cpu_fsdp", False):
        return

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        plugin = fsdp_plugin or getattr(self, "_cpu_fsdp_plugin", None)
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = self._cpu_fsdp_plugin = plugin

    init._cpu_fsdp = True
    AcceleratorState.__init__ = init


def deepspeed_on_cpu() -> dict:
    """The `TrainingArguments` that make DeepSpeed run ZeRO-3 over gloo on CPU processes.

    accelerate skips DeepSpeed when `use_cpu` is set, and without a backend its `PartialState`
    counts one process; so the state is built first with gloo and DeepSpeed on, and reused.
    DeepSpeed's shared-memory all-reduce op (a C++ build of minutes, a speed-up only) is skipped.
    """
    import importlib

    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    # `deepspeed.comm.torch` the attribute is torch itself (a star import); patch the module
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    AcceleratorState._reset_state(reset_partial_state=True)  # one DeepSpeed Accelerator per state
    PartialState(backend="gloo")
    config = {
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},  # shard even tiny weights
        "zero_allow_untested_optimizer": True,
        **{key: "auto" for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                   "gradient_clipping", "train_batch_size")},
    }
    return dict(use_cpu=False, deepspeed=config, accelerator_config={"use_configured_state": True})


def train(case: str, shard: str, processes: int, output_dir: str) -> dict:
    """Logged training and evaluation values of one case, and what the trainer decided about chunking."""
    from peft import LoraConfig

    from merlina_orpo_plugin import MerlinaORPOTrainer, ORPOConfig

    spec = CASES[case]
    extra = {"use_cpu": True}
    if shard == "fsdp2":
        allow_fsdp_on_cpu()
        extra.update(fsdp=True, fsdp_config={
            "version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": spec["wrap"], "reshard_after_forward": True,
        })
    elif shard == "zero3":
        extra = deepspeed_on_cpu()
    args = ORPOConfig(
        output_dir=output_dir, per_device_train_batch_size=GLOBAL_BATCH // processes // spec["accumulation"],
        gradient_accumulation_steps=spec["accumulation"], per_device_eval_batch_size=2, max_steps=STEPS,
        learning_rate=1e-2 if spec["lora"] else 1e-3, logging_steps=1, report_to="none", save_strategy="no",
        seed=0, train_sampling_strategy="sequential", loss_chunk_size=CHUNK, max_length=64, max_prompt_length=32,
        ddp_backend="gloo" if processes > 1 else None, bf16=False,  # float32 compares at 1e-5
        generate_during_eval=True, num_generation_samples=GENERATIONS, generation_max_new_tokens=4, **extra,
        # gradient checkpointing stays at its default (on, as in TRL): under ZeRO-3 it must recompute reentrantly
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0) if spec["lora"] else None
    data = pairs(GLOBAL_BATCH * STEPS + 4)
    trainer = MerlinaORPOTrainer(
        model=model(spec["tied"], spec.get("group_tail", False)), args=args,
        train_dataset=data.select(range(GLOBAL_BATCH * STEPS)),
        eval_dataset=data.select(range(GLOBAL_BATCH * STEPS, len(data))), processing_class=tokenizer(),
        peft_config=lora,
    )
    trainer.train()
    evaluation = trainer.evaluate()
    logs = [{k: log[k] for k in LOGGED} for log in trainer.state.log_history if "loss" in log]
    if processes > 1:
        torch.distributed.barrier()  # every rank is past its evaluation: a second writer would have written
    return {
        "generations": generation_rows(output_dir, missing_ok=True),
        "logs": logs,
        "eval": {k: evaluation[k] for k in EVALUATED},
        "loss_chunk_size": trainer.speed.loss_chunk_size,
        "fallbacks": list(trainer.speed.fallbacks),
        "sharding": str(trainer.accelerator.distributed_type),
        "wrapped": type(trainer.model_wrapped).__name__,
        "head": type(trainer.model.get_output_embeddings()).__name__,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("runs", nargs="+", 
        help=f"SHARDING:CASE, SHARDING one of none, fsdp2, zero3 (last), CASE one of {sorted(CASES)}",
    )
    options = parser.parse_args(argv)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1:  # accelerate and DeepSpeed reuse this group; a hung collective fails in 2 minutes
        torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=120))
    results = {}
    shared = Path(options.out).resolve().parent  # one output_dir for all ranks, as a real run has
    for run in options.runs:
        shard, case = run.split(":")
        output_dir = shared / run.replace(":", "-")
        output_dir.mkdir(exist_ok=True)
        results[run] = train(case, shard, processes, str(output_dir))
    if int(os.environ.get("RANK", "0")) == 0:
        Path(options.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
