"""The trainer as a user runs it, per tuning (full, LoRA r16, QLoRA 4-bit): ``train()`` logging every
step, ``evaluate()``, ``save_model()`` (reloaded and compared), and a resume from the step-2 checkpoint
whose steps 3-4 must log the same losses (on CUDA with PyTorch's deterministic algorithms); then the
real ``axolotl train`` with the plugin, where Axolotl is installed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .. import gpu_check as C
from ..impls import absent_reason, child_env, write_config
from ..workload import BETA, LORA, MAX_LENGTH, Shape, build_model_dir, build_rows, load_tokenizer
from . import RESULTS, free, log, record_error, save

#: log keys that are not a function of the model state (timings, counters)
NOT_COMPARED = {"epoch", "step", "learning_rate", "train_runtime", "train_samples_per_second",
                "train_steps_per_second", "train_loss", "total_flos"}


def build_inputs(work: Path) -> tuple[Path, list[dict], list[dict]]:
    """A seeded Llama saved to ``work/model`` (vocab 128,256 on CUDA, 49,152 on CPU) and text pairs."""
    scale = "smoke" if C.ARGS.quick else "cpu"
    vocab = 128256 if C.ARGS.device == "cuda" else 49152
    info = build_model_dir(work / "model", scale, vocab, C.ARGS.device, seed=0)
    shape = Shape("check", 48, 24, 2) if C.ARGS.quick else Shape("check", 256, 96, 2)
    rows = build_rows(load_tokenizer(), shape, 20, seed=3)
    RESULTS["trainer"]["setup"] = dict(model=info, rows=shape.describe(), train_rows=16, eval_rows=4)
    return work / "model", rows[:16], rows[16:]


def orpo_args(output_dir: Path):
    from merlina_orpo_plugin import ORPOConfig

    cuda = C.ARGS.device == "cuda"
    return ORPOConfig(output_dir=str(output_dir), per_device_train_batch_size=2, per_device_eval_batch_size=2,
                      gradient_accumulation_steps=2, max_steps=4, logging_steps=1, save_strategy="steps", save_steps=2,
                      eval_strategy="no", learning_rate=1e-4, lr_scheduler_type="constant", bf16=True, use_cpu=not cuda,
                      report_to="none", seed=0, beta=BETA, max_length=MAX_LENGTH, max_prompt_length=768,
                      dataloader_num_workers=0, disable_dropout=True)


def load_model(model_dir: Path, tune: str):
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=torch.bfloat16)
    if tune == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0} if C.ARGS.device == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    return model.to(C.ARGS.device) if tune != "qlora" else model


def trainer_for(model_dir: Path, tune: str, output_dir: Path, train_rows, eval_rows):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from merlina_orpo_plugin import MerlinaORPOTrainer

    peft_config = None
    if tune != "full":
        import peft

        peft_config = peft.LoraConfig(**LORA)
    torch.manual_seed(0)
    return MerlinaORPOTrainer(model=load_model(model_dir, tune), args=orpo_args(output_dir),
                              train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows),
                              processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=peft_config)


def step_logs(history: list[dict]) -> dict[int, dict]:
    return {entry["step"]: entry for entry in history if "loss" in entry}


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


def same_weights(trained, saved_dir: Path, tune: str, model_dir: Path) -> float:
    """Largest |trained - reloaded| over the saved tensors (0.0: saved and reloaded exactly)."""
    if tune == "full":
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(saved_dir, dtype=torch.bfloat16).state_dict()
        ours = {k: v for k, v in trained.state_dict().items()}
    else:
        from peft import PeftModel
        from peft.utils import get_peft_model_state_dict

        reloaded = get_peft_model_state_dict(PeftModel.from_pretrained(load_model(model_dir, tune), saved_dir))
        ours = get_peft_model_state_dict(trained)
    worst = 0.0
    for name, tensor in reloaded.items():
        if name in ours:
            worst = max(worst, (tensor.float().cpu() - ours[name].float().cpu()).abs().max().item())
    missing = set(ours) - set(reloaded)
    if tune != "full" and missing:
        raise AssertionError(f"adapter tensors missing from the saved adapter: {sorted(missing)[:5]}")
    return worst


def check_tune(tune: str, model_dir: Path, work: Path, train_rows, eval_rows) -> dict:
    from ..measure import speed_plan

    entry: dict = {"tune": tune}
    start = time.perf_counter()
    first = trainer_for(model_dir, tune, work / tune, train_rows, eval_rows)
    entry["speed_plan"] = speed_plan(first)
    first.train()
    logs = step_logs(first.state.log_history)
    entry["losses"] = {step: logs[step]["loss"] for step in sorted(logs)}
    entry["logged_steps"] = sorted(logs)
    entry["log_keys"] = sorted(logs[max(logs)]) if logs else []
    evaluation = first.evaluate()
    entry["eval"] = {k: v for k, v in evaluation.items() if isinstance(v, (int, float))}
    first.save_model(str(work / tune / "final"))
    entry["saved_max_abs_diff"] = same_weights(first.model, work / tune / "final", tune, model_dir)
    del first
    free()

    second = trainer_for(model_dir, tune, work / tune, train_rows, eval_rows)
    second.train(resume_from_checkpoint=str(work / tune / "checkpoint-2"))
    resumed = step_logs(second.state.log_history)
    del second
    free()
    diffs = {}
    for step in (3, 4):
        a, b = logs.get(step), resumed.get(step)
        if a is None or b is None:
            diffs[step] = {"missing": f"step {step} logged: first run {a is not None}, resumed run {b is not None}"}
            continue
        keys = sorted((set(a) & set(b)) - NOT_COMPARED)
        diffs[step] = {k: rel_diff(float(a[k]), float(b[k])) for k in keys if isinstance(a[k], (int, float))}
    entry["resume_rel_diffs"] = diffs
    entry["resume_max_rel_diff"] = max((max(d.values(), default=0.0) for d in diffs.values()
                                        if "missing" not in d), default=None)
    problems = []
    if entry["logged_steps"] != [1, 2, 3, 4]:
        problems.append(f"logged steps {entry['logged_steps']}, expected [1, 2, 3, 4]")
    if not all(math.isfinite(v) for v in entry["losses"].values()):
        problems.append(f"non-finite training loss {entry['losses']}")
    if not math.isfinite(entry["eval"].get("eval_loss", float("nan"))):
        problems.append(f"evaluate() gave no finite eval_loss: {entry['eval']}")
    if entry["saved_max_abs_diff"] != 0.0:
        problems.append(f"saved weights differ from the trained ones by {entry['saved_max_abs_diff']:.3g}")
    if any("missing" in d for d in diffs.values()):
        problems += [d["missing"] for d in diffs.values() if "missing" in d]
    elif entry["resume_max_rel_diff"] > C.ARGS.resume_tol:
        problems.append(f"resumed steps 3-4 differ by {entry['resume_max_rel_diff']:.3g} (bar {C.ARGS.resume_tol:g})")
    entry.update(problems=problems, passed=not problems, seconds=round(time.perf_counter() - start, 1))
    return entry


def check_axolotl(model_dir: Path, train_rows, work: Path) -> dict:
    """``axolotl train`` with the plugin, bf16 (float32 on CPU), logging every step, saving at steps 2 and 4."""

    data = work / "axolotl" / "pairs.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    overrides = dict(gradient_accumulation_steps=2, logging_steps=1, save_strategy="steps", save_steps=2,
                     bf16=C.ARGS.device == "cuda", max_steps=4, micro_batch_size=2, learning_rate=1e-4)  # CPU: Axolotl refuses bf16
    job = dict(impl="axolotl_merlina", device=C.ARGS.device, model_dir=str(model_dir), data_path=str(data), beta=BETA,
               max_length=MAX_LENGTH, micro_batch=2, warmup=0, steps=4, learning_rate=1e-4, seed=0,
               work_dir=str(work / "axolotl"), merlina_yaml=overrides)
    config = write_config(job)
    start = time.perf_counter()
    # `python -m axolotl.cli.main`: wheels installed with `pip --target` bring no console script
    proc = subprocess.run([sys.executable, "-m", "axolotl.cli.main", "train", str(config)], cwd=work / "axolotl",
                          env=child_env(None, C.ARGS.device), capture_output=True, text=True, timeout=C.ARGS.axolotl_timeout)
    entry = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 1)}
    state = work / "axolotl" / "out" / "checkpoint-4" / "trainer_state.json"
    if proc.returncode != 0 or not state.exists():
        entry.update(passed=False, problems=[f"exit {proc.returncode}; {state.name} present: {state.exists()}"],
                     output_tail=(proc.stdout + proc.stderr)[-3000:])
        return entry
    logs = step_logs(json.loads(state.read_text())["log_history"])
    entry.update(losses={s: logs[s]["loss"] for s in sorted(logs)}, logged_steps=sorted(logs))
    entry["problems"] = [] if entry["logged_steps"] == [1, 2, 3, 4] and all(
        math.isfinite(v) for v in entry["losses"].values()) else [f"logged {entry['losses']}"]
    entry["passed"] = not entry["problems"]
    return entry


def run_trainer_check() -> None:
    res = RESULTS["trainer"]
    if C.ARGS.device == "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
        res["deterministic"] = "torch.use_deterministic_algorithms(True, warn_only=True), CUBLAS_WORKSPACE_CONFIG=" + \
            os.environ.get("CUBLAS_WORKSPACE_CONFIG", "(unset)")
    tunes = [t.strip() for t in C.ARGS.tunes.split(",") if t.strip()]
    reasons = {"lora": absent_reason("peft"), "qlora": absent_reason("bitsandbytes") or absent_reason("peft")}
    with tempfile.TemporaryDirectory(prefix="merlina-trainer-check-") as tmp:
        work = Path(tmp)
        try:
            model_dir, train_rows, eval_rows = build_inputs(work)
        except Exception:
            record_error("trainer check inputs")
            return
        res["tunes"] = {}
        for tune in tunes:
            if reasons.get(tune):
                res["tunes"][tune] = {"tune": tune, "skipped": reasons[tune]}
                log(f"trainer check {tune}: skipped ({reasons[tune]})")
                continue
            log(f"trainer check {tune}: train 4 steps (save at 2, 4), evaluate, save_model, resume from 2")
            try:
                res["tunes"][tune] = check_tune(tune, model_dir, work, train_rows, eval_rows)
                r = res["tunes"][tune]
                log(f"    {'PASS' if r['passed'] else 'FAIL'} losses {r['losses']} eval_loss {r['eval'].get('eval_loss')} "
                    f"resume max rel diff {r['resume_max_rel_diff']} ({r['seconds']} s) {r['problems']}")
            except Exception:
                res["tunes"][tune] = {"tune": tune, "error": record_error(f"trainer check {tune}"), "passed": False}
                free()
            save()
        if C.ARGS.axolotl:
            reason = absent_reason("axolotl")
            if reason:
                res["axolotl"] = {"skipped": reason}
            else:
                log("trainer check: axolotl train with the plugin")
                try:
                    res["axolotl"] = check_axolotl(model_dir, train_rows, work)
                    log(f"    {'PASS' if res['axolotl']['passed'] else 'FAIL'} {res['axolotl'].get('losses')}")
                except Exception:
                    res["axolotl"] = {"error": record_error("trainer check axolotl"), "passed": False}
    ran = [r for r in [*res["tunes"].values(), res.get("axolotl") or {}] if "passed" in r]
    res["all_passed"] = bool(ran) and all(r["passed"] for r in ran)
    save()
