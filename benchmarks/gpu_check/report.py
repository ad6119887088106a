"""The Markdown summary of ``common.RESULTS``.
"""

from __future__ import annotations

from . import common as C
from .common import RESULTS, elapsed


def fmt(x, spec=".2e"):
    return "-" if x is None else format(x, spec)


def markdown() -> str:
    env = RESULTS["env"]
    lines = [f"# gpu_check: {env.get('device_name', env.get('device'))}, torch {env.get('torch')}, "
             f"transformers {env.get('transformers')}, trl {env.get('trl')}", ""]
    s1 = RESULTS["section1"]
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
    s2 = RESULTS["section2"]
    if s2.get("runs"):
        lines += [f"## 2. Speed and memory ({s2['setup']['dtype']}, AdamW step included)", "",
                  f"MFU = 6 x n_params x unique tokens/s / {C.ARGS.peak_tflops:g} TFLOP/s: counts unique tokens "
                  "(prompt once + chosen + rejected) and ignores attention FLOPs.", "",
                  "| shape | vocab | variant | batch | ms/step | pairs/s | unique tok/s | processed/unique | peak GiB | MFU | first loss |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in s2["runs"]:
            head = f"| {r['shape']} | {r['vocab']} | {r['variant']} |"
            if "skipped" in r or "error" in r:
                lines.append(f"{head} {r.get('skipped') or 'ERROR: ' + r['error']} ||||||||")
                continue
            lines.append(f"{head} {'x'.join(map(str, r['batch_shape']))} | {r['ms_per_step']:.0f} | {r['pairs_per_s']:.1f} | "
                         f"{r['unique_tokens_per_s']:,.0f} | {r['processed_per_unique']:.2f} | {fmt(r['peak_mem_gib'], '.1f')} | "
                         f"{100 * r['mfu']:.1f}% | {r['first_step_loss']:.4f} |")
        params = next((r["n_params"] for r in s2["runs"] if "n_params" in r), None)
        if params:
            lines.append(f"\nn_params (first model measured): {params / 1e6:.0f}M")
        lines.append("")
    s3 = RESULTS["section3"]
    if s3.get("setup"):
        st = s3["setup"]
        lines += [f"## 3. Loss-only memory: {st['rows']} rows x {st['tokens']} tokens, hidden {st['hidden']}, "
                  f"vocab {st['vocab']:,}, {st['dtype']} (TRL side: {st['trl_source']})", "",
                  "| side | peak above baseline GiB | ms | loss |", "|---|---|---|---|"]
        for name in ("trl_full_logits", f"ours_chunked_{st['chunk_size']}"):
            r = s3.get(name, {})
            if "error" in r:
                lines.append(f"| {name} | ERROR: {r['error']} |||")
            elif r:
                lines.append(f"| {name} | {fmt(r['peak_delta_gib'], '.3f')} | {r['seconds'] * 1e3:.0f} | {r['loss']:.6f} |")
        if "memory_ratio_trl_over_ours" in s3:
            lines.append(f"\nTRL / ours peak memory: {s3['memory_ratio_trl_over_ours']:.2f}x")
        if "loss_rel_diff" in s3:
            lines.append(f"loss relative difference ({st['dtype']}): {s3['loss_rel_diff']:.2e}")
        lines.append("")
    if RESULTS["errors"]:
        lines += ["## Errors", ""] + [f"- {e['where']}: {e['traceback'].strip().splitlines()[-1]}" for e in RESULTS["errors"]]
    lines.append(f"\nTotal wall time {elapsed():.0f}s (budget {C.ARGS.budget_s:.0f}s).")
    return "\n".join(lines) + "\n"
