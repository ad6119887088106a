"""The Markdown summary of ``common.RESULTS``."""

from __future__ import annotations

from . import common as C
from .common import RESULTS, elapsed


def fmt(x, spec=".2e"):
    return "-" if x is None else format(x, spec)


def markdown() -> str:
    env = RESULTS["env"]
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    lines = [f"# gpu_check: {env.get('gpu') or env.get('cpu')}{' (quick)' if C.ARGS.quick else ''}", "",
             f"- command: `python -m benchmarks gpu-check {' '.join(env.get('argv') or [])}`; date {env.get('date')}; "
             f"git {env.get('git')}",
             f"- versions: {versions}; CUDA {env.get('cuda')}; Python {env.get('python')}", ""]
    lines += section1_lines(RESULTS["section1"], env) + section2_lines(RESULTS["section2"]) + trainer_lines(RESULTS["trainer"])
    if RESULTS["errors"]:
        lines += ["## Errors", ""] + [f"- {e['where']}: {e['traceback'].strip().splitlines()[-1]}" for e in RESULTS["errors"]]
    lines.append(f"\nTotal wall time {elapsed():.0f}s (budget {C.ARGS.budget_s:.0f}s).")
    return "\n".join(lines) + "\n"


def section1_lines(s1: dict, env: dict) -> list[str]:
    lines = []
    if s1.get("variants"):
        lines += ["## 1. Equivalence vs sdpa padded unchunked (max |diff| / max |ref|)", "",
                  f"bar {C.ARGS.tol:g} for float32; TF32 {'off' if not env.get('tf32') else 'on'}; "
                  f"reference float32 loss {fmt(s1.get('reference_float32', {}).get('loss'), '.6f')}", "",
                  "| variant | dtype | loss | chosen logps | rejected logps | nll | grads (worst param) | processed/unique | result |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for v in s1["variants"]:
            if "skipped" in v or "error" in v:
                lines.append(f"| {v['name']} | {v.get('dtype', '')} | {v.get('skipped') or 'ERROR: ' + v['error']} |||||||")
                continue
            ratio = f"{v['processed'] / v['unique']:.2f}" if v.get("unique") else "-"
            result = {True: "PASS", False: "FAIL", None: "(no bar)"}[v.get("pass")]
            if v.get("note"):
                result += f" ({v['note']})"
            if v.get("leak"):
                result += " (expected FAIL: shows the check detects a wrong mask)"
            if v.get("retried_static_shapes"):
                result += " (dynamic-shape flex compile failed, static-shape retry)"
            grads = f"{fmt(v.get('grads'))} ({v.get('grads_worst_param')})" if "grads" in v else "not computed"
            lines.append(f"| {v['name']} | {v.get('dtype')} | {fmt(v['loss'])} | {fmt(v['chosen_logps'])} | "
                         f"{fmt(v['rejected_logps'])} | {fmt(v['nll'])} | {grads} | {ratio} | {result} |")
        lines.append(f"\nAll float32 variants as expected: {s1.get('all_float32_pass')}"
                     + (f" (not run: {', '.join(s1['float32_not_run'])})" if s1.get("float32_not_run") else ""))
        lines.append("")
    return lines


def section2_lines(s2: dict) -> list[str]:
    lines = []
    if s2.get("sides"):
        st = s2["setup"]
        lines += [f"## 2. Loss alone: {2 * st['pairs']} rows x {st['tokens']} tokens, hidden {st['hidden']}, "
                  f"vocab {st['vocab']:,}, {st['dtype']}, chunk {st['chunk_size']}", "",
                  "| side | peak above baseline GiB | ms | loss |", "|---|---|---|---|"]
        for name, r in s2["sides"].items():
            if "error" in r:
                lines.append(f"| {name} | ERROR: {r['error']} |||")
                continue
            peak = fmt(r["peak_delta_bytes"] / 2**30, ".3f") if st["device"] == "cuda" else "(CPU: not per side)"
            lines.append(f"| {name} | {peak} | {r['seconds'] * 1e3:.0f} | {r['loss']:.6f} |")
        if "memory_ratio_trl_over_ours" in s2:
            lines.append(f"\nTRL / ours (chunked) peak memory: {s2['memory_ratio_trl_over_ours']:.2f}x")
        if "loss_rel_diff" in s2:
            lines.append(f"loss relative difference, ours chunked vs TRL ({st['dtype']}): {s2['loss_rel_diff']:.2e}")
        lines.append("")
    return lines


def trainer_lines(tr: dict) -> list[str]:
    lines = []
    if tr.get("tunes") is not None:
        lines += ["## Trainer check: train (logging every step), evaluate, save_model, resume from step 2", "",
                  f"Model: {tr['setup']['model']['params'] / 1e6:.1f}M-parameter Llama, vocab "
                  f"{tr['setup']['model']['vocab_size']:,}; bf16; micro-batch 2, gradient accumulation 2, 4 steps, "
                  f"checkpoints at 2 and 4; rows: {tr['setup']['rows']}; resume bar {C.ARGS.resume_tol:g} relative"
                  + (f"; {tr['deterministic']}" if tr.get("deterministic") else ""), "",
                  "| tuning | result | losses, steps 1-4 | eval_loss | saved = trained | resumed steps 3-4, max rel diff "
                  "| speed plan | s |", "|---|---|---|---|---|---|---|---|"]
        for tune, r in tr["tunes"].items():
            if "skipped" in r or "error" in r:
                lines.append(f"| {tune} | {'skipped: ' + r['skipped'] if 'skipped' in r else 'ERROR: ' + r['error']} "
                             "||||||")
                continue
            losses = ", ".join(f"{v:.4f}" for v in r["losses"].values())
            plan = ", ".join(f"{k}={v}" for k, v in r["speed_plan"].items() if v not in (None, [], ()))
            result = "PASS" if r["passed"] else "FAIL: " + "; ".join(r["problems"])
            lines.append(f"| {tune} | {result} | {losses} | {fmt(r['eval'].get('eval_loss'), '.4f')} | "
                         f"{r['saved_max_abs_diff'] == 0.0} | {fmt(r['resume_max_rel_diff'])} | {plan} | {r['seconds']} |")
        ax = tr.get("axolotl")
        if ax:
            text = ("skipped: " + ax["skipped"] if "skipped" in ax else "ERROR: " + ax["error"] if "error" in ax else
                    ("PASS" if ax["passed"] else "FAIL: " + "; ".join(ax["problems"])) + f", losses {ax.get('losses')}, "
                    f"{ax['seconds']} s")
            lines.append(f"\n`axolotl train` with the plugin (bf16 on CUDA, accumulation 2, logging every step): {text}")
        lines.append(f"\nAll trainer checks passed: {tr.get('all_passed')}")
        lines.append("")
    return lines
