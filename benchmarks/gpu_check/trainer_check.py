"""The trainer as a user runs it, per tuning: train, evaluate, save and reload, resume."""

from __future__ import annotations

import math
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import peft
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from merlina_orpo_plugin import MerlinaORPOTrainer, ORPOConfig

from ..impls import absent_reason
from ..measure import free, speed_plan
from ..report import fmt, table
from ..workload import BETA, LORA, MAX_LENGTH, Shape, build_model_dir, build_rows, load_tokenizer

RESUME_TOL = 1e-6  # resumed steps 3-4: the largest relative difference of a logged value
STEPS = [1, 2, 3, 4]  # every run: 4 optimizer steps, each logged, checkpoints at 2 and 4
NOT_COMPARED = {"epoch", "step", "learning_rate", "train_runtime", "train_samples_per_second",
                "train_steps_per_second", "train_loss", "total_flos"}


def build_inputs(check, work: Path) -> tuple[Path, list[dict], list[dict]]:
    """A seeded Llama saved to ``work/model`` (vocab 128,256 on CUDA, 49,152 on CPU) and text pairs."""
    quick, device = check.args.quick, check.args.device
    info = build_model_dir(work / "model", "smoke" if quick else "cpu", 128256 if device == "cuda" else 49152, device)
    shape = Shape("check", 48, 24, 2) if quick else Shape("check", 256, 96, 2)
    rows = build_rows(load_tokenizer(), shape, 20, seed=3)
    check.results["trainer"]["setup"] = dict(model=info, rows=shape.describe(), train_rows=16, eval_rows=4)
    return work / "model", rows[:16], rows[16:]


def load_model(model_dir: Path, tune: str, device: str):
    if tune != "qlora":
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, quantization_config=quantization,
                                                device_map={"": 0 if device == "cuda" else "cpu"})


def trainer_for(model_dir: Path, tune: str, device: str, output_dir: Path, train_rows, eval_rows):
    args = ORPOConfig(output_dir=str(output_dir), per_device_train_batch_size=2, per_device_eval_batch_size=2,
                      gradient_accumulation_steps=2, max_steps=4, logging_steps=1, save_strategy="steps", save_steps=2,
                      eval_strategy="no", learning_rate=1e-4, lr_scheduler_type="constant", bf16=True,
                      use_cpu=device != "cuda", report_to="none", seed=0, beta=BETA, max_length=MAX_LENGTH,
                      max_prompt_length=768, dataloader_num_workers=0, disable_dropout=True)
    torch.manual_seed(0)
    return MerlinaORPOTrainer(model=load_model(model_dir, tune, device), args=args,
                              train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows),
                              processing_class=AutoTokenizer.from_pretrained(model_dir),
                              peft_config=None if tune == "full" else peft.LoraConfig(**LORA))


def step_logs(history: list[dict]) -> dict[int, dict]:
    return {entry["step"]: entry for entry in history if "loss" in entry}


def logged_run(logs: dict[int, dict]) -> tuple[dict, list[str]]:
    """A run's losses and logged steps, and what is wrong with them."""
    run = dict(losses={step: logs[step]["loss"] for step in sorted(logs)}, logged_steps=sorted(logs))
    checks = [(run["logged_steps"] == STEPS, f"logged steps {run['logged_steps']}, expected {STEPS}"),
              (all(map(math.isfinite, run["losses"].values())), f"non-finite training loss {run['losses']}")]
    return run, [text for ok, text in checks if not ok]


def rel_diffs(a: dict, b: dict) -> dict[str, float]:
    """|a - b| / |a| for each number both logged, bookkeeping values (step, time, ...) left out."""
    keys = sorted((set(a) & set(b)) - NOT_COMPARED)
    return {k: abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in keys if isinstance(a[k], (int, float))}


def saved_diff(trained, saved_dir: Path, tune: str, model_dir: Path, device: str) -> float:
    """Largest |trained - reloaded| over the saved tensors (0.0: saved and reloaded exactly)."""
    if tune == "full":
        ours = trained.state_dict()
        reloaded = AutoModelForCausalLM.from_pretrained(saved_dir, dtype=torch.bfloat16).state_dict()
    else:
        ours = peft.get_peft_model_state_dict(trained)
        reloaded = peft.get_peft_model_state_dict(peft.PeftModel.from_pretrained(load_model(model_dir, tune, device),
                                                                                 saved_dir))
        missing = sorted(set(ours) - set(reloaded))
        if missing:
            raise AssertionError(f"adapter tensors missing from the saved adapter: {missing[:5]}")
    return max((((t.float().cpu() - ours[n].float().cpu()).abs().max().item()) for n, t in reloaded.items()
                if n in ours), default=0.0)


def check_tune(check, tune: str, work: Path, model_dir: Path, train_rows, eval_rows) -> dict:
    device, start, out = check.args.device, time.perf_counter(), work / tune
    make = partial(trainer_for, model_dir, tune, device, out, train_rows, eval_rows)  # same seed, same model
    first = make()
    entry: dict = {"tune": tune, "speed_plan": speed_plan(first)}
    first.train()
    logs = step_logs(first.state.log_history)
    run, problems = logged_run(logs)
    entry.update(run, log_keys=sorted(logs[max(logs)]) if logs else [],
                 eval={k: v for k, v in first.evaluate().items() if isinstance(v, (int, float))})
    first.save_model(str(out / "final"))
    entry["saved_max_abs_diff"] = saved_diff(first.model, out / "final", tune, model_dir, device)
    del first
    free(collect=True)
    second = make()
    second.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    resumed = step_logs(second.state.log_history)
    del second
    free(collect=True)
    diffs = {step: rel_diffs(logs[step], resumed[step]) for step in (3, 4) if step in logs and step in resumed}
    worst = max((max(d.values(), default=0.0) for d in diffs.values()), default=None)
    entry.update(resume_rel_diffs=diffs, resume_max_rel_diff=worst)
    checks = [({3, 4} <= set(resumed), f"resumed run logged steps {sorted(resumed)}, not 3 and 4"),
              (math.isfinite(entry["eval"].get("eval_loss", math.nan)), f"no finite eval_loss: {entry['eval']}"),
              (entry["saved_max_abs_diff"] == 0.0, f"saved weights differ by {entry['saved_max_abs_diff']:.3g}"),
              (worst is None or worst <= RESUME_TOL, f"resumed steps 3-4 differ by {fmt(worst, '.3g')} > {RESUME_TOL}")]
    problems += [text for ok, text in checks if not ok]
    return dict(entry, problems=problems, passed=not problems, seconds=round(time.perf_counter() - start, 1))


def verdict(r: dict) -> str:
    """One check's outcome: PASS, FAIL and its problems, skipped and why, or ERROR and the exception."""
    if "skipped" in r or "error" in r:
        return "skipped: " + r["skipped"] if "skipped" in r else "ERROR: " + r["error"]
    return "PASS" if r["passed"] else "FAIL: " + "; ".join(r["problems"])


def run_part(check, name: str, skipped: str | None, fn) -> dict:
    """``fn()``'s record (failed if it raises), or ``{"skipped": skipped}``; logged and saved."""
    check.log(f"trainer check {name}")
    r = {"skipped": skipped} if skipped else check.attempt(f"trainer check {name}", fn, passed=False)
    check.log(f"    {verdict(r)}; losses {r.get('losses')} ({r.get('seconds')} s)")
    check.save()
    return r


def run_trainer_check(check) -> None:
    res, device = check.results["trainer"], check.args.device
    if device == "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
        res["deterministic"] = "torch.use_deterministic_algorithms(True, warn_only=True), CUBLAS_WORKSPACE_CONFIG=" + \
            os.environ.get("CUBLAS_WORKSPACE_CONFIG", "(unset)")
    with tempfile.TemporaryDirectory(prefix="merlina-trainer-check-") as tmp:
        inputs = build_inputs(check, Path(tmp))
        res["tunes"] = {}
        for tune in ("full", "lora", "qlora") if device == "cuda" else ("full", "lora"):
            res["tunes"][tune] = {"tune": tune, **run_part(
                check, f"{tune}: train 4 steps (save at 2, 4), evaluate, save_model, resume from 2",
                absent_reason("bitsandbytes") if tune == "qlora" else None,
                partial(check_tune, check, tune, Path(tmp), *inputs))}
    ran = [r for r in res["tunes"].values() if "passed" in r]
    res["all_passed"] = bool(ran) and all(r["passed"] for r in ran)


def trainer_lines(tr: dict) -> list[str]:
    if tr.get("tunes") is None:
        return []
    rows = []
    for tune, r in tr["tunes"].items():
        cells = [] if "skipped" in r or "error" in r else [
            ", ".join(f"{v:.4f}" for v in r["losses"].values()), fmt(r["eval"].get("eval_loss"), ".4f"),
            r["saved_max_abs_diff"] == 0.0, fmt(r["resume_max_rel_diff"], ".2e"),
            ", ".join(f"{k}={v}" for k, v in r["speed_plan"].items() if v not in (None, [], ())), r["seconds"]]
        rows.append([tune, verdict(r), *(cells or [""] * 6)])
    model, setup = tr["setup"]["model"], tr["setup"]
    lines = ["## Trainer check: train (logging every step), evaluate, save_model, resume from step 2", "",
             f"Model: {model['params'] / 1e6:.1f}M-parameter Llama, vocab {model['vocab_size']:,}; bf16; micro-batch "
             f"2, gradient accumulation 2, 4 steps, checkpoints at 2 and 4; rows: {setup['rows']}; resume bar "
             f"{RESUME_TOL:g} relative" + (f"; {tr['deterministic']}" if tr.get("deterministic") else ""), ""]
    lines += table(["tuning", "result", "losses, steps 1-4", "eval_loss", "saved = trained",
                    "resumed steps 3-4, max rel diff", "speed plan", "s"], rows)
    return lines + [f"\nAll trainer checks passed: {tr.get('all_passed')}", ""]
