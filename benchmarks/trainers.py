"""One configuration of a Python-driven implementation (`impls.IMPLS`): load the model, build the
trainer, and either time warm-up + timed steps (``job["mode"] == "time"``, `measure.StepTimer`) or find
the largest micro-batch that trains two steps (``"max_batch"``: doubling, then bisection, each
out-of-memory caught and freed). In the caller's process (`run_job`) or a fresh one
(``python -m benchmarks train --job JOB.json``)."""

from __future__ import annotations

import functools
import gc
import json
import time
from pathlib import Path

import torch

from .workload import load_tokenizer, read_rows

#: ORPOConfig kwargs that turn our speed features off ("merlina_nospeed").
SPEED_OFF = {"prefix_sharing": False, "padding_free": False, "loss_chunk_size": 0}


def training_kwargs(job: dict, micro_batch: int, max_steps: int) -> dict:
    """The `TrainingArguments` every implementation shares (Axolotl's: `impls.write_config`)."""
    cuda = job["device"] == "cuda"
    return dict(
        output_dir=str(Path(job["work_dir"]) / "out"), per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=1, learning_rate=job["learning_rate"], lr_scheduler_type="constant",
        optim="adamw_torch_fused" if cuda else "adamw_torch", weight_decay=0.0, max_grad_norm=1.0,
        max_steps=max_steps, logging_steps=1000, save_strategy="no", eval_strategy="no", report_to="none",
        seed=job["seed"], bf16=cuda, use_cpu=not cuda, gradient_checkpointing=False, dataloader_num_workers=0,
        dataloader_pin_memory=False, train_sampling_strategy="sequential", remove_unused_columns=False,
    )


def causal_lm_rows(tokenizer, rows: list[dict]) -> list[dict]:
    """One row per pair: BOS + prompt + chosen + EOS + rejected + EOS, the tokens the ORPO trainers count
    as the pair's unique tokens (they add BOS to the prompt and EOS to each answer)."""
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    out = []
    for row in rows:
        ids = [tokenizer(row[k], add_special_tokens=False)["input_ids"] for k in ("prompt", "chosen", "rejected")]
        out.append({"input_ids": bos + ids[0] + ids[1] + [tokenizer.eos_token_id] + ids[2] + [tokenizer.eos_token_id]})
    return out


class CausalLMCollator:
    """Right-pads ``input_ids``; labels are the ids, -100 on padding (the model's own shifted loss)."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def build_trainer(job: dict, model, tokenizer, rows: list[dict], micro_batch: int, max_steps: int, callbacks):
    from datasets import Dataset

    impl, kwargs = job["impl"], training_kwargs(job, micro_batch, max_steps)
    if impl == "causal_lm":
        from transformers import Trainer, TrainingArguments

        return Trainer(model=model, args=TrainingArguments(**kwargs), train_dataset=Dataset.from_list(causal_lm_rows(
            tokenizer, rows)), data_collator=CausalLMCollator(tokenizer.pad_token_id), callbacks=callbacks)
    orpo = dict(beta=job["beta"], max_length=job["max_length"], disable_dropout=True)
    dataset = Dataset.from_list(rows)
    if impl in ("trl", "trl_liger"):
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        cls = ORPOTrainer
        if impl == "trl_liger":
            from .trl_liger import LigerORPOTrainer as cls
        trainer = cls(model=model, args=ORPOConfig(**kwargs, **orpo), train_dataset=dataset, processing_class=tokenizer,
                      callbacks=callbacks)
        if impl == "trl_liger":
            trainer.liger_compiled = job["liger_compiled"]  # this trainer's: the class default stays Liger's
        return trainer
    from merlina_orpo_plugin import MerlinaORPOTrainer, ORPOConfig

    # TRL 1.9 cuts prompts only to fit max_length; ours also has max_prompt_length (by default half of
    # max_length): set so that no prompt of the workload is cut
    extra = dict(max_prompt_length=job["max_prompt_length"], **(SPEED_OFF if impl == "merlina_nospeed" else {}))
    return MerlinaORPOTrainer(model=model, args=ORPOConfig(**kwargs, **orpo, **extra), train_dataset=dataset,
                              processing_class=tokenizer, callbacks=callbacks)


@functools.lru_cache(maxsize=4)
def tokenizer_for(model_dir: str):
    return load_tokenizer(model_dir)


def load(job: dict):
    from transformers import AutoModelForCausalLM

    from .workload import add_lora

    torch.manual_seed(job["seed"])
    cuda = job["device"] == "cuda"
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.bfloat16 if cuda else torch.float32)
    if cuda:
        model = model.to("cuda")
    if job["tune"] == "lora":
        model = add_lora(model)
    return model, tokenizer_for(job["model_dir"])


def free() -> None:
    """Collect the last configuration's tensors and hand the GPU's cache back (a no-op on CPU, where a
    collection of a large process costs about half a second)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def time_steps(job: dict) -> dict:
    from .measure import StepTimer

    torch._dynamo.reset()  # inline runs: every configuration compiles (Liger's loss) as a fresh process would
    model, tokenizer = load(job)
    timer = StepTimer(job["warmup"], job["steps"], extra={"impl": job["impl"], "tune": job["tune"]})
    trainer = build_trainer(job, model, tokenizer, read_rows(job["data_path"]), job["micro_batch"],
                            job["warmup"] + job["steps"], [timer])
    timer.attach(trainer, job["micro_batch"])
    trainer.train()
    del trainer, model
    free()
    return timer.result


def fits(job: dict, model, tokenizer, rows: list[dict], pairs: int) -> dict:
    """Two training steps of ``pairs`` pairs each (the second holds the optimizer state), or OOM."""
    from .measure import MemoryCap

    cap = job.get("memory_cap_mib")
    watch = MemoryCap(int(cap * 2**20) if cap else None)
    batch = [rows[i % len(rows)] for i in range(2 * pairs)]
    trial = {"pairs": pairs, "fits": True}
    try:
        trainer = build_trainer(job, model, tokenizer, batch, pairs, 2, [watch])
        trainer.train()
    except torch.OutOfMemoryError as error:
        trial.update(fits=False, error=str(error).splitlines()[0][:200])
    trainer = None  # the trainer, its optimizer state and the failed step's tensors go before the next try
    model.zero_grad(set_to_none=True)
    gc.collect()
    free()
    return {**trial, "peak_gib": round(watch.used / 2**30, 3)}


def max_batch(job: dict) -> dict:
    """Largest micro-batch (pairs) in [1, job["max_batch_limit"]] that fits: double from 1, then bisect;
    stopped early (``complete`` false) once ``job["search_seconds"]`` have passed."""
    model, tokenizer = load(job)
    rows, limit = read_rows(job["data_path"]), job["max_batch_limit"]
    trials, fit, fail, stopped = [], 0, None, None
    pairs, start = 1, time.perf_counter()
    while pairs:
        if job.get("search_seconds") and time.perf_counter() - start > job["search_seconds"]:
            stopped = f"{job['search_seconds']:.0f} s search budget spent before trying {pairs} pairs"
            break
        trials.append(fits(job, model, tokenizer, rows, pairs))
        ok = trials[-1]["fits"]
        print(f"    {job['impl']}: {pairs} pairs {'fit' if ok else 'out of memory'} ({trials[-1]['peak_gib']} GiB)",
              flush=True)
        if ok:
            fit = pairs
        else:
            fail = pairs
        partial = {"impl": job["impl"], "tune": job["tune"], "max_pairs": fit, "limit_reached": False, "limit": limit,
                   "trials": trials, "complete": False}
        Path(job["result_path"]).write_text(json.dumps(partial, indent=1))  # what a timeout leaves behind
        if fail is None:
            pairs = min(2 * pairs, limit) if pairs < limit else 0
        else:
            pairs = (fit + fail) // 2 if fail - fit > 1 else 0
    model = None
    free()
    return {"impl": job["impl"], "tune": job["tune"], "max_pairs": fit, "limit_reached": fail is None and not stopped,
            "limit": limit, "trials": trials, "complete": not stopped, **({"stopped": stopped} if stopped else {})}


def run_job(job: dict) -> dict:
    return max_batch(job) if job.get("mode") == "max_batch" else time_steps(job)


def run_job_file(job_path: str | Path) -> int:
    """The child process's side: run the job file's configuration, write its result beside it."""
    job = json.loads(Path(job_path).read_text())
    Path(job["result_path"]).write_text(json.dumps(run_job(job), indent=1, default=str))
    return 0
