"""Section 1: every layout / attention / chunking variant against TRL's padded layout (sdpa, no chunking)."""

from __future__ import annotations

import time

import torch
from transformers import LlamaForCausalLM

from ..loss import collate, ours_loss, trl_features, trl_loss, trl_trainer
from ..measure import free, processed_tokens, sync, unique_tokens
from ..report import fmt, table
from ..workload import llama_config, random_pairs

E = ".2e"  # how differences print
TOL = 1e-5  # the float32 pass bar, max |diff| / max |reference|
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
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.set_grad_enabled(grad):
        batch = trl_features(features) if trl else collate(features, shared, packed)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if leak:  # negative control: no branch ids, so rejected tokens see the chosen ones
            batch["branch_ids"] = torch.zeros_like(batch["branch_ids"])
        loss, chosen, rejected, nll = trl_loss(trl_trainer(device), model, batch) if trl else ours_loss(
            model, batch, chunk)
        if grad:
            loss.backward()
    sync()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    out = dict(loss=loss, chosen_logps=chosen, rejected_logps=rejected, nll=nll)
    return {**{k: v.detach().float() for k, v in out.items()}, "grads": grads, "processed": processed_tokens(batch),
            "unique": unique_tokens(features, {}), "seconds": time.perf_counter() - start}


def compare(got: dict, ref: dict) -> dict:
    """Each output's `rel` to the reference; grads: the worst parameter's."""
    out = {k: rel(got[k], ref[k]) for k in ("loss", "chosen_logps", "rejected_logps", "nll")}
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
        dname = str(dtype).replace("torch.", "")
        skip = None if dtype is torch.float32 else "CPU --quick: bf16 has no pass bar" if cpu_quick else (
            f"budget: {check.elapsed():.0f}s elapsed" if check.elapsed() > 0.45 * args.budget_s else None)
        if skip:
            res["variants"].append(dict(name=f"{dname} variants", skipped=skip))
            check.log(f"section 1: {dname} variants skipped ({skip})")
            continue
        try:
            check.log(f"section 1 [{dname}]: reference (sdpa, TRL's padded layout, no chunking)")
            ref = run_once(tiny_model(args.device, "sdpa", dtype), features, args.device)
            res[f"reference_{dname}"] = dict(loss=ref["loss"].item(), nll=ref["nll"].item(), processed=ref["processed"],
                                             unique=ref["unique"], seconds=ref["seconds"])
        except Exception:
            res[f"reference_{dname}"] = dict(error=check.error(f"section1 reference {dname}"))
            continue
        for name, attn, kw in VARIANTS[dname]:
            entry = dict(name=name, dtype=dname, attn=attn, **kw)
            res["variants"].append(entry)
            run_variant(check, entry, kw, dtype, features, ref, bar)
            check.save()
    summarise(check, features)


def run_variant(check, entry: dict, kw: dict, dtype, features, ref: dict, bar) -> None:
    """One variant against the reference: its differences and verdict written into ``entry``."""
    flex, cpu = entry["attn"] == "flex_attention", check.args.device == "cpu"
    if flex and check.remaining() < 60:
        entry["skipped"] = f"budget: {check.remaining():.0f}s left"
        check.log(f"section 1: skip {entry['name']} ({entry['skipped']})")
        return
    if flex and cpu:
        entry["note"] = "forward only: FlexAttention has no backward on CPU"
    try:
        check.log(f"section 1 [{entry['dtype']}]: {entry['name']}" + (" (flex compiles per new shape)" if flex else ""))
        got = run_retrying(check, entry, dtype, features, grad=not (flex and cpu), **kw)
        diffs = compare(got, ref)
        worst = max(v for v in diffs.values() if isinstance(v, float))
        entry.update(diffs, processed=got["processed"], unique=got["unique"], seconds=round(got["seconds"], 2),
                     max_rel=worst, **{"pass": None if bar is None else bool(worst <= bar)})
        if kw.get("leak") and bar is not None:
            entry["as_expected"] = not entry["pass"]
        check.log(f"    max rel {worst:.2e} (loss {diffs['loss']:.1e}, nll {diffs['nll']:.1e}, grads "
                  f"{fmt(diffs.get('grads'), '.1e')}) {'' if bar is None else 'PASS' if entry['pass'] else 'FAIL'}")
    except Exception:
        entry["error"] = check.error(f"section1 {entry['name']}")
        free(collect=True)


def run_retrying(check, entry: dict, dtype, features, **kw) -> dict:
    """`run_once`; a flex variant whose dynamic-shape compile fails is retried with static shapes."""
    device = check.args.device
    try:
        return run_once(tiny_model(device, entry["attn"], dtype), features, device, **kw)
    except Exception:
        if entry["attn"] != "flex_attention" or not torch._dynamo.config.automatic_dynamic_shapes:
            raise
    entry["dynamic_shapes_error"] = check.error(f"section1 {entry['name']} (dynamic-shape flex compile)")
    check.log("    retrying with static shapes (torch._dynamo.reset(), automatic_dynamic_shapes=False)")
    free(collect=True)
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.reset()
    entry["retried_static_shapes"] = True
    return run_once(tiny_model(device, entry["attn"], dtype), features, device, **kw)


def summarise(check, features) -> None:
    """The float32 verdict; if a flex variant failed, whether transformers' own flex mask fails too."""
    res, device = check.results["section1"], check.args.device
    bars = [v for v in res["variants"] if v.get("dtype") == "float32" and "pass" in v]
    res["all_float32_pass"] = bool(bars) and all(v["as_expected"] if v.get("leak") else v["pass"] for v in bars)
    res["float32_not_run"] = [v["name"] for v in res["variants"] if v.get("dtype") == "float32" and "pass" not in v]
    if any(v.get("attn") == "flex_attention" and v.get("pass") is False for v in res["variants"]) and \
            check.remaining() > 60:  # flex's numerics or our mask?
        entry = dict(name="diagnostic: flex plain padded (transformers' own BlockMask)", dtype="float32",
                     attn="flex_attention")
        res["variants"].append(entry)
        try:
            ref = run_once(tiny_model(device, "sdpa", torch.float32), features, device)
            diffs = compare(run_once(tiny_model(device, "flex_attention", torch.float32), features, device,
                                     grad=device != "cpu"), ref)
            entry.update(diffs, max_rel=max(v for v in diffs.values() if isinstance(v, float)))
            check.log(f"    flex padded diagnostic: max rel {entry['max_rel']:.2e}")
        except Exception:
            entry["error"] = check.error("section1 flex diagnostic")
    check.save()


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
        diffs = [fmt(v[k], E) for k in ("loss", "chosen_logps", "rejected_logps", "nll")]
        ratio = f"{v['processed'] / v['unique']:.2f}" if v.get("unique") else "-"
        rows.append([v["name"], v.get("dtype"), *diffs, grads, ratio, result])
    not_run = f" (not run: {', '.join(s1['float32_not_run'])})" if s1.get("float32_not_run") else ""
    tf32, reference = "on" if check.results["env"].get("tf32") else "off", s1.get("reference_float32", {})
    return (["## 1. Equivalence vs sdpa padded unchunked (max |diff| / max |ref|)", "",
             f"bar {TOL:g} for float32; TF32 {tf32}; reference float32 loss {fmt(reference.get('loss'), '.6f')}", ""]
            + table(["variant", "dtype", "loss", "chosen logps", "rejected logps", "nll", "grads (worst param)",
                     "processed/unique", "result"], rows)
            + ["", f"All float32 variants as expected: {s1.get('all_float32_pass')}{not_run}", ""])
