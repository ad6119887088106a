"""The trainer as a user runs it, per tuning: train, evaluate, save and reload, resume; then ``axolotl train``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import peft
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from merlina_orpo_plugin import MerlinaORPOTrainer, ORPOConfig

from ..impls import absent_reason, child_env, write_config
from ..measure import free, speed_plan
from ..report import fmt, table
from ..workload import BETA, LORA, MAX_LENGTH, Shape, build_model_dir, build_rows, load_tokenizer

RESUME_TOL = 1e-6  # resumed steps 3-4: the largest relative difference of a logged value
AXOLOTL_TIMEOUT_S = 300
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


def check_tune(check, tune: str, model_dir: Path, work: Path, train_rows, eval_rows) -> dict:
    device, start, out = check.args.device, time.perf_counter(), work / tune
    first = trainer_for(model_dir, tune, device, out, train_rows, eval_rows)
    entry: dict = {"tune": tune, "speed_plan": speed_plan(first)}
    first.train()
    logs = step_logs(first.state.log_history)
    entry.update(losses={step: logs[step]["loss"] for step in sorted(logs)}, logged_steps=sorted(logs),
                 log_keys=sorted(logs[max(logs)]) if logs else [],
                 eval={k: v for k, v in first.evaluate().items() if isinstance(v, (int, float))})
    first.save_model(str(out / "final"))
    entry["saved_max_abs_diff"] = saved_diff(first.model, out / "final", tune, model_dir, device)
    del first
    free(collect=True)
    second = trainer_for(model_dir, tune, device, out, train_rows, eval_rows)
    second.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    resumed = step_logs(second.state.log_history)
    del second
    free(collect=True)
    problems, diffs = [], {}
    for step, a, b in ((s, logs.get(s), resumed.get(s)) for s in (3, 4)):
        if a is None or b is None:
            diffs[step] = {"missing": f"step {step} logged: first run {a is not None}, resumed run {b is not None}"}
            problems.append(diffs[step]["missing"])
        else:
            diffs[step] = {k: abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in sorted((set(a) & set(b)) - NOT_COMPARED)
                           if isinstance(a[k], (int, float))}
    worst = max((max(d.values(), default=0.0) for d in diffs.values() if "missing" not in d), default=None)
    entry.update(resume_rel_diffs=diffs, resume_max_rel_diff=worst)
    checks = [(entry["logged_steps"] == [1, 2, 3, 4], f"logged steps {entry['logged_steps']}, expected [1, 2, 3, 4]"),
              (all(map(math.isfinite, entry["losses"].values())), f"non-finite training loss {entry['losses']}"),
              (math.isfinite(entry["eval"].get("eval_loss", math.nan)), f"no finite eval_loss: {entry['eval']}"),
              (entry["saved_max_abs_diff"] == 0.0, f"saved weights differ by {entry['saved_max_abs_diff']:.3g}"),
              (problems or worst <= RESUME_TOL, f"resumed steps 3-4 differ by {fmt(worst, '.3g')} (bar {RESUME_TOL})")]
    problems += [text for ok, text in checks if not ok]
    return dict(entry, problems=problems, passed=not problems, seconds=round(time.perf_counter() - start, 1))


def check_axolotl(check, model_dir: Path, train_rows, work: Path) -> dict:
    """``axolotl train`` with the plugin, bf16 (float32 on CPU), logging every step, saving at steps 2 and 4."""
    work, device = work / "axolotl", check.args.device
    data = work / "pairs.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    overrides = dict(gradient_accumulation_steps=2, logging_steps=1, save_strategy="steps", save_steps=2,
                     bf16=device == "cuda", max_steps=4, micro_batch_size=2, learning_rate=1e-4)  # CPU: no bf16
    config = write_config(dict(impl="axolotl_merlina", device=device, model_dir=str(model_dir), data_path=str(data),
                               beta=BETA, max_length=MAX_LENGTH, micro_batch=2, warmup=0, steps=4, learning_rate=1e-4,
                               seed=0, work_dir=str(work), merlina_yaml=overrides))
    start = time.perf_counter()
    # `python -m axolotl.cli.main`: wheels installed with `pip --target` bring no console script
    proc = subprocess.run([sys.executable, "-m", "axolotl.cli.main", "train", str(config)], cwd=work,
                          env=child_env(None, device), capture_output=True, text=True, timeout=AXOLOTL_TIMEOUT_S)
    entry = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 1)}
    state = work / "out" / "checkpoint-4" / "trainer_state.json"
    if proc.returncode != 0 or not state.exists():
        return dict(entry, passed=False, problems=[f"exit {proc.returncode}; {state.name} present: {state.exists()}"],
                    output_tail=(proc.stdout + proc.stderr)[-3000:])
    logs = step_logs(json.loads(state.read_text())["log_history"])
    entry.update(losses={s: logs[s]["loss"] for s in sorted(logs)}, logged_steps=sorted(logs))
    ok = entry["logged_steps"] == [1, 2, 3, 4] and all(map(math.isfinite, entry["losses"].values()))
    return dict(entry, problems=[] if ok else [f"logged {entry['losses']}"], passed=ok)


def run_trainer_check(check) -> None:
    res, device = check.results["trainer"], check.args.device
    if device == "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
        res["deterministic"] = "torch.use_deterministic_algorithms(True, warn_only=True), CUBLAS_WORKSPACE_CONFIG=" + \
            os.environ.get("CUBLAS_WORKSPACE_CONFIG", "(unset)")
    reasons = {"qlora": absent_reason("bitsandbytes")}
    with tempfile.TemporaryDirectory(prefix="merlina-trainer-check-") as tmp:
        try:
            model_dir, train_rows, eval_rows = build_inputs(check, Path(tmp))
        except Exception:
            check.error("trainer check inputs")
            return
        res["tunes"] = {}
        for tune in ("full", "lora", "qlora") if device == "cuda" else ("full", "lora"):
            if reasons.get(tune):
                res["tunes"][tune] = {"tune": tune, "skipped": reasons[tune]}
                check.log(f"trainer check {tune}: skipped ({reasons[tune]})")
                continue
            check.log(f"trainer check {tune}: train 4 steps (save at 2, 4), evaluate, save_model, resume from 2")
            try:
                r = res["tunes"][tune] = check_tune(check, tune, model_dir, Path(tmp), train_rows, eval_rows)
                check.log(f"    {'PASS' if r['passed'] else 'FAIL'} losses {r['losses']} resume max rel diff "
                          f"{r['resume_max_rel_diff']} ({r['seconds']} s) {r['problems']}")
            except Exception:
                res["tunes"][tune] = {"tune": tune, "error": check.error(f"trainer check {tune}"), "passed": False}
                free(collect=True)
            check.save()
        reason = absent_reason("axolotl") if check.args.axolotl else None
        if reason:
            res["axolotl"] = {"skipped": reason}
        elif check.args.axolotl:
            check.log("trainer check: axolotl train with the plugin")
            try:
                res["axolotl"] = check_axolotl(check, model_dir, train_rows, Path(tmp))
                check.log(f"    {'PASS' if res['axolotl']['passed'] else 'FAIL'} {res['axolotl'].get('losses')}")
            except Exception:
                res["axolotl"] = {"error": check.error("trainer check axolotl"), "passed": False}
    ran = [r for r in [*res["tunes"].values(), res.get("axolotl") or {}] if "passed" in r]
    res["all_passed"] = bool(ran) and all(r["passed"] for r in ran)
    check.save()


def trainer_lines(tr: dict) -> list[str]:
    if tr.get("tunes") is None:
        return []
    rows = []
    for tune, r in tr["tunes"].items():
        if "skipped" in r or "error" in r:
            rows.append([tune, "skipped: " + r["skipped"] if "skipped" in r else "ERROR: " + r["error"]] + [""] * 6)
            continue
        plan = ", ".join(f"{k}={v}" for k, v in r["speed_plan"].items() if v not in (None, [], ()))
        rows.append([tune, "PASS" if r["passed"] else "FAIL: " + "; ".join(r["problems"]),
                     ", ".join(f"{v:.4f}" for v in r["losses"].values()), fmt(r["eval"].get("eval_loss"), ".4f"),
                     r["saved_max_abs_diff"] == 0.0, fmt(r["resume_max_rel_diff"], ".2e"), plan, r["seconds"]])
    model, lines = tr["setup"]["model"], ["## Trainer check: train (logging every step), evaluate, save_model, "
                                          "resume from step 2", ""]
    lines += [f"Model: {model['params'] / 1e6:.1f}M-parameter Llama, vocab {model['vocab_size']:,}; bf16; micro-batch "
              f"2, gradient accumulation 2, 4 steps, checkpoints at 2 and 4; rows: {tr['setup']['rows']}; resume bar "
              f"{RESUME_TOL:g} relative" + (f"; {tr['deterministic']}" if tr.get("deterministic") else ""), ""]
    lines += table(["tuning", "result", "losses, steps 1-4", "eval_loss", "saved = trained",
                    "resumed steps 3-4, max rel diff", "speed plan", "s"], rows)
    ax = tr.get("axolotl")
    if ax:
        text = ("skipped: " + ax["skipped"] if "skipped" in ax else "ERROR: " + ax["error"] if "error" in ax else
                ("PASS" if ax["passed"] else "FAIL: " + "; ".join(ax["problems"]))
                + f", losses {ax.get('losses')}, {ax['seconds']} s")
        lines.append(f"\n`axolotl train` with the plugin (bf16 on CUDA, accumulation 2, logging every step): {text}")
    return lines + [f"\nAll trainer checks passed: {tr.get('all_passed')}", ""]
