"""Section 1: every layout / attention / chunking variant against TRL's padded layout (sdpa, no chunking)."""

from __future__ import annotations

import time

import torch
from transformers import LlamaForCausalLM

from ..loss import collate, ours_loss, trl_features, trl_loss, trl_trainer
from ..measure import processed_tokens, sync, unique_tokens
from ..report import fmt, table
from ..workload import llama_config, random_pairs

E = ".2e"  # how differences print
TOL = 1e-5  # the float32 pass bar, max |diff| / max |reference|
OUTPUTS = ("loss", "chosen_logps", "rejected_logps", "nll")  # what ours_loss and trl_loss return, in order
VARIANTS = {  # dtype -> (name, attention, run_once options)
    "float32": [
        ("sdpa shared+packed chunk64", "sdpa", dict(shared=True, packed=True, chunk=64)),
        ("flex shared+packed chunk64", "flex_attention", dict(shared=True, packed=True, chunk=64)),
        ("flex shared", "flex_attention", dict(shared=True)),
        ("flex packed", "flex_attention", dict(packed=True)),
        ("eager shared+packed", "eager", dict(shared=True, packed=True)),
        ("TRL ORPOTrainer (sdpa, padded)", "sdpa", dict(trl=True)),
        ("negative control: sdpa shared, rejected sees chosen (must FAIL)", "sdpa", dict(shared=True, leak=True)),
    ],
    "bfloat16": [
        ("bf16 sdpa shared+packed chunk64", "sdpa", dict(shared=True, packed=True, chunk=64)),
        ("bf16 flex shared+packed chunk64", "flex_attention", dict(shared=True, packed=True, chunk=64)),
    ],
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (|a - b| where b is all zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    diff, scale = (a - b).abs().max().item(), b.abs().max().item()
    return diff / scale if scale > 0 else diff


def tiny_model(device: str, attn: str, dtype):
    """The smoke Llama, narrower, on CPU first (same weights everywhere); 5x init so logits are not near-uniform."""
    torch.manual_seed(1234)
    config = llama_config("smoke", 49152, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=4096,
                          attn_implementation=attn, initializer_range=0.1)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).train()


def run_once(model, features, device, *, shared=False, packed=False, chunk=0, trl=False, grad=True, leak=False):
    """One loss (and backward): the OUTPUTS, the gradients, the tokens processed and unique, the seconds."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.set_grad_enabled(grad):
        batch = trl_features(features) if trl else collate(features, shared, packed)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if leak:  # negative control: no branch ids, so rejected tokens see the chosen ones
            batch["branch_ids"] = torch.zeros_like(batch["branch_ids"])
        outputs = trl_loss(trl_trainer(device), model, batch) if trl else ours_loss(model, batch, chunk)
        if grad:
            outputs[0].backward()
    sync()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {**{k: v.detach().float() for k, v in zip(OUTPUTS, outputs)}, "grads": grads,
            "processed": processed_tokens(batch), "unique": unique_tokens(features, {}),
            "seconds": time.perf_counter() - start}


def compare(got: dict, ref: dict) -> dict:
    """Each output's `rel` to the reference; grads: the worst parameter's."""
    out = {k: rel(got[k], ref[k]) for k in OUTPUTS}
    if got["grads"]:
        if set(got["grads"]) != set(ref["grads"]):
            out["grad_keys_mismatch"] = sorted(set(got["grads"]) ^ set(ref["grads"]))[:10]
        diffs = {n: rel(got["grads"][n], g) if n in got["grads"] else float("inf") for n, g in ref["grads"].items()}
        out["grads_worst_param"] = max(diffs, key=diffs.get)
        out["grads"] = diffs[out["grads_worst_param"]]
    return out


def section1(check) -> None:
    res, args = check.results["section1"], check.args
    n, prompt, comp = (4, (20, 120), (5, 60)) if args.quick else (8, (20, 300), (5, 120))
    features = random_pairs(n, prompt, comp, comp, 49152, seed=7)
    res["setup"] = dict(pairs=n, prompt=prompt, completions=comp, vocab=49152, tol=TOL,
                        metric="max|diff| / max|reference| per tensor; grads: worst parameter",
                        tf32=dict(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32))
    res["variants"], cpu_quick = [], args.device == "cpu" and args.quick
    if cpu_quick:  # CPU: one static flex compile per shape (its dynamic-shape compile fails, then retries)
        torch._dynamo.config.automatic_dynamic_shapes = False
    for dtype, bar in ((torch.float32, TOL), (torch.bfloat16, None)):
        dname = str(dtype).removeprefix("torch.")
        skip = None if bar else "CPU --quick: bf16 has no pass bar" if cpu_quick else (
            f"budget: {check.elapsed():.0f}s elapsed" if check.elapsed() > 0.45 * args.budget_s else None)
        if skip:
            res["variants"].append(dict(name=f"{dname} variants", skipped=skip))
            check.log(f"section 1: {dname} variants skipped ({skip})")
            continue
        check.log(f"section 1 [{dname}]: reference (sdpa, TRL's padded layout, no chunking)")
        ref = check.attempt(f"section1 reference {dname}",
                            lambda: run_once(tiny_model(args.device, "sdpa", dtype), features, args.device))
        res[f"reference_{dname}"] = ref if "error" in ref else dict(
            loss=ref["loss"].item(), nll=ref["nll"].item(), processed=ref["processed"], unique=ref["unique"],
            seconds=ref["seconds"])
        for name, attn, kw in [] if "error" in ref else VARIANTS[dname]:
            run_variant(check, dict(name=name, dtype=dname, attn=attn, **kw), kw, dtype, features, ref, bar)
        if bar:
            summarise(check)


def run_variant(check, entry: dict, kw: dict, dtype, features, ref: dict, bar) -> None:
    """One variant against the reference, its differences and verdict written into ``entry`` (saved); a flex
    variant whose dynamic-shape compile fails is retried with static shapes."""
    flex, device = entry["attn"] == "flex_attention", check.args.device
    check.results["section1"]["variants"].append(entry)
    if flex and check.remaining() < 60:
        entry["skipped"] = f"budget: {check.remaining():.0f}s left"
        check.log(f"section 1: skip {entry['name']} ({entry['skipped']})")
        return
    if flex and device == "cpu":
        entry["note"] = "forward only: FlexAttention has no backward on CPU"

    def run():  # a fresh model each try
        return run_once(tiny_model(device, entry["attn"], dtype), features, device, grad=not (flex and device == "cpu"),
                        **kw)

    check.log(f"section 1 [{entry['dtype']}]: {entry['name']}" + (" (flex compiles per new shape)" if flex else ""))
    dynamic, where = flex and torch._dynamo.config.automatic_dynamic_shapes, f"section1 {entry['name']}"
    got = check.attempt(where + (" (dynamic-shape flex compile)" if dynamic else ""), run)
    if "error" in got and dynamic:
        entry.update(dynamic_shapes_error=got["error"], retried_static_shapes=True)
        check.log("    retrying with static shapes (torch._dynamo.reset(), automatic_dynamic_shapes=False)")
        torch._dynamo.config.automatic_dynamic_shapes = False
        torch._dynamo.reset()
        got = check.attempt(where, run)
    if "error" in got:
        entry["error"] = got["error"]
    else:
        diffs = compare(got, ref)
        worst = max(v for v in diffs.values() if isinstance(v, float))
        entry.update(diffs, processed=got["processed"], unique=got["unique"], seconds=round(got["seconds"], 2),
                     max_rel=worst, **{"pass": None if bar is None else bool(worst <= bar)})
        if kw.get("leak") and bar is not None:
            entry["as_expected"] = not entry["pass"]
        check.log(f"    max rel {worst:.2e}: {'(no bar)' if bar is None else 'PASS' if entry['pass'] else 'FAIL'}")
    check.save()


def summarise(check) -> None:
    """The float32 verdict: every variant run, each passed (the negative control failed)."""
    res = check.results["section1"]
    float32 = [v for v in res["variants"] if v.get("dtype") == "float32"]
    bars = [v for v in float32 if "pass" in v]
    res["all_float32_pass"] = bool(bars) and all(v["as_expected"] if v.get("leak") else v["pass"] for v in bars)
    res["float32_not_run"] = [v["name"] for v in float32 if "pass" not in v]


def section1_lines(check) -> list[str]:
    s1, rows = check.results["section1"], []
    if not s1.get("variants"):
        return []
    for v in s1["variants"]:
        if "skipped" in v or "error" in v:
            rows.append([v["name"], v.get("dtype", ""), v.get("skipped") or "ERROR: " + v["error"]] + [""] * 6)
            continue
        notes = [v.get("note"), v.get("leak") and "expected FAIL: shows the check detects a wrong mask",
                 v.get("retried_static_shapes") and "dynamic-shape flex compile failed, static-shape retry"]
        result = {True: "PASS", False: "FAIL", None: "(no bar)"}[v.get("pass")] + "".join(f" ({n})" for n in notes if n)
        grads = f"{fmt(v['grads'], E)} ({v['grads_worst_param']})" if "grads" in v else "not computed"
        ratio = f"{v['processed'] / v['unique']:.2f}" if v.get("unique") else "-"
        rows.append([v["name"], v.get("dtype"), *(fmt(v[k], E) for k in OUTPUTS), grads, ratio, result])
    not_run = f" (not run: {', '.join(s1['float32_not_run'])})" if s1.get("float32_not_run") else ""
    tf32, reference = "on" if check.results["env"].get("tf32") else "off", s1.get("reference_float32", {})
    return (["## 1. Equivalence vs sdpa padded unchunked (max |diff| / max |ref|)", "",
             f"bar {TOL:g} for float32; TF32 {tf32}; reference float32 loss {fmt(reference.get('loss'), '.6f')}", ""]
            + table(["variant", "dtype", "loss", "chosen logps", "rejected logps", "nll", "grads (worst param)",
                     "processed/unique", "result"], rows)
            + ["", f"All float32 variants as expected: {s1.get('all_float32_pass')}{not_run}", ""])
