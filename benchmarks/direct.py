"""Child process for the implementations driven from Python: TRL's trainer and ours.

``python -m benchmarks.direct JOB.json`` loads the saved model and the JSONL workload, builds the
trainer with the job's settings, attaches `benchmarks.measure.StepTimer` and trains.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def training_kwargs(job: dict) -> dict:
    """The `TrainingArguments` shared by every direct implementation (Axolotl YAML: `axolotl_yaml`)."""
    cuda = job["device"] == "cuda"
    return dict(
        output_dir=str(Path(job["work_dir"]) / "out"),
        per_device_train_batch_size=job["micro_batch"],
        gradient_accumulation_steps=1,
        learning_rate=job["learning_rate"],
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=job["warmup"] + job["steps"],
        logging_steps=1000,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=job["seed"],
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        train_sampling_strategy="sequential",
        remove_unused_columns=False,
        beta=job["beta"],
        max_length=job["max_length"],
        disable_dropout=True,
    )


def build_trainer(job: dict, model, tokenizer, dataset, callbacks):
    impl = job["impl"]
    kwargs = training_kwargs(job)
    if impl == "trl":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(model=model, args=ORPOConfig(**kwargs), train_dataset=dataset,
                           processing_class=tokenizer, callbacks=callbacks)
    from merlina_orpo_plugin import MerlinaORPOTrainer, ORPOConfig

    kwargs.update(job.get("merlina_kwargs") or {})
    return MerlinaORPOTrainer(model=model, args=ORPOConfig(**kwargs), train_dataset=dataset,
                              processing_class=tokenizer, callbacks=callbacks)


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .measure import StepTimer
    from .workload import read_rows

    torch.manual_seed(job["seed"])
    dtype = torch.bfloat16 if job["device"] == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=dtype, attn_implementation="sdpa")
    if job["device"] == "cuda":
        model = model.to("cuda")
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    dataset = Dataset.from_list(read_rows(job["data_path"]))
    timer = StepTimer(job["warmup"], job["steps"], job["result_path"], extra={"impl": job["impl"]})
    trainer = build_trainer(job, model, tokenizer, dataset, [timer])
    timer.attach(trainer, job["micro_batch"])
    trainer.train()


if __name__ == "__main__":
    main(sys.argv[1])
