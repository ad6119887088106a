"""One configuration of a Python-driven implementation, its steps timed."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
from datasets import Dataset
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from merlina_orpo_plugin import MerlinaORPOTrainer
from merlina_orpo_plugin import ORPOConfig as MerlinaConfig

from .measure import StepTimer, free
from .workload import LORA, load_tokenizer, read_rows

SPEED_OFF = {"prefix_sharing": False, "padding_free": False, "loss_chunk_size": 0}
LIGER_METRICS = ("logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "nll_loss", "rewards/chosen",
                 "rewards/rejected", "log_odds_ratio", "log_odds_chosen")


def training_kwargs(job: dict) -> dict:
    """The `TrainingArguments` every implementation shares (Axolotl's: `impls.write_config`)."""
    cuda = job["device"] == "cuda"
    return dict(
        output_dir=str(Path(job["work_dir"]) / "out"), per_device_train_batch_size=job["micro_batch"],
        gradient_accumulation_steps=1, learning_rate=job["learning_rate"], lr_scheduler_type="constant",
        optim="adamw_torch_fused" if cuda else "adamw_torch", weight_decay=0.0, max_grad_norm=1.0,
        max_steps=job["warmup"] + job["steps"], logging_steps=1000, save_strategy="no", eval_strategy="no",
        report_to="none", seed=job["seed"], bf16=cuda, use_cpu=not cuda, gradient_checkpointing=False,
        dataloader_num_workers=0, dataloader_pin_memory=False, train_sampling_strategy="sequential",
        remove_unused_columns=False,
    )


def causal_lm_rows(tokenizer, rows: list[dict]) -> list[dict]:
    """One row per pair: BOS + prompt + chosen + EOS + rejected + EOS, the pair's unique tokens."""
    bos, eos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id], [tokenizer.eos_token_id]
    ids = [[tokenizer(row[k], add_special_tokens=False)["input_ids"] for k in ("prompt", "chosen", "rejected")]
           for row in rows]
    return [{"input_ids": bos + prompt + chosen + eos + rejected + eos} for prompt, chosen, rejected in ids]


@dataclass
class CausalLMCollator:
    """Right-pads ``input_ids``; labels are the ids, -100 on padding."""

    pad: int

    def __call__(self, rows):
        ids = pad_sequence([torch.tensor(r["input_ids"]) for r in rows], batch_first=True, padding_value=self.pad)
        mask = pad_sequence([torch.ones(len(r["input_ids"]), dtype=torch.long) for r in rows], batch_first=True)
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def liger_trainer(compiled: bool):
    """Liger 0.8.1's ``LigerORPOTrainer`` body on TRL 1.9's trainer (README.md here: why not Liger's own)."""
    from liger_kernel.chunked_loss import LigerFusedLinearORPOLoss
    from trl.experimental.orpo import ORPOTrainer

    class LigerORPOTrainer(ORPOTrainer):
        def concatenated_forward(self, model, batch):
            c = self.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=self.padding_value,
                                         device=self.accelerator.device)
            ids, mask = c["concatenated_input_ids"], c["concatenated_attention_mask"]
            base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: the wrapped LM
            hidden = base.model(ids, attention_mask=mask, use_cache=False).last_hidden_state
            loss_fn = LigerFusedLinearORPOLoss(ignore_index=-100, beta=self.beta, compiled=compiled)
            return loss_fn(base.lm_head.weight, hidden[:, :-1], c["concatenated_labels"][:, 1:], base.lm_head.bias,
                           nll_target=torch.where(mask == 1, ids, -100)[:, 1:])

        def get_batch_loss_metrics(self, model, batch, train_eval="train"):
            loss, aux = self.concatenated_forward(model, batch)  # aux: Liger's nine outputs, named in LIGER_METRICS
            chosen, rejected = aux[5:7]
            metrics = {**dict(zip(LIGER_METRICS, aux)), "rewards/accuracies": (chosen > rejected).float(),
                       "rewards/margins": chosen - rejected}
            prefix = "eval_" if train_eval == "eval" else ""
            return loss, {prefix + k: v.detach().mean().item() for k, v in metrics.items()}

    return LigerORPOTrainer


def build_trainer(job: dict, model, tokenizer, rows: list[dict], callbacks):
    impl, kwargs = job["impl"], training_kwargs(job)
    if impl == "causal_lm":
        return Trainer(model=model, args=TrainingArguments(**kwargs), callbacks=callbacks,
                       train_dataset=Dataset.from_list(causal_lm_rows(tokenizer, rows)),
                       data_collator=CausalLMCollator(tokenizer.pad_token_id))
    orpo, common = dict(beta=job["beta"], max_length=job["max_length"], disable_dropout=True), dict(
        model=model, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=callbacks)
    if impl in ("trl", "trl_liger"):
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        cls = liger_trainer(job["liger_compiled"]) if impl == "trl_liger" else ORPOTrainer
        return cls(args=ORPOConfig(**kwargs, **orpo), **common)
    extra = dict(max_prompt_length=job["max_prompt_length"], **(SPEED_OFF if impl == "merlina_nospeed" else {}))
    return MerlinaORPOTrainer(args=MerlinaConfig(**kwargs, **orpo, **extra), **common)


tokenizer_for = functools.lru_cache(maxsize=4)(load_tokenizer)


def run_job(job: dict) -> dict:
    """Train ``warmup + steps`` steps, the steps after the warm-up timed (`--job`: in a child process)."""
    torch._dynamo.reset()  # inline runs: every configuration compiles (Liger's loss) as a fresh process would
    torch.manual_seed(job["seed"])
    cuda = job["device"] == "cuda"
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.bfloat16 if cuda else torch.float32)
    model = model.to("cuda" if cuda else "cpu")
    if job["tune"] == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(**LORA))
    timer = StepTimer(job["warmup"], job["steps"], extra={"impl": job["impl"], "tune": job["tune"]})
    trainer = build_trainer(job, model, tokenizer_for(job["model_dir"]), read_rows(job["data_path"]), [timer])
    timer.attach(trainer, job["micro_batch"])
    trainer.train()
    del trainer, model
    free()
    return timer.result
