"""Section 1: float32 (and bf16) equivalence of every layout / attention / chunking variant against the
reference, TRL's padded layout with sdpa and no chunking.
"""

from __future__ import annotations

import time

import torch

from .. import gpu_check as C
from ..loss import collate, ours_loss, trl_features, trl_loss, trl_trainer
from ..measure import sync
from ..workload import llama_config, random_pairs
from . import RESULTS, elapsed, fmt, free, log, record_error, rel, remaining, save, to_device


def tiny_model(attn: str, dtype):
    from transformers import LlamaForCausalLM

    torch.manual_seed(1234)
    # the smoke Llama, narrower; 5x the default init: the default gives near-uniform logits (every log-prob
    # ~ -log V), and then the forward outputs cannot show a layout difference in float32 at all
    config = llama_config("smoke", 49152, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=4096,
                          attn_implementation=attn, initializer_range=0.1)
    model = LlamaForCausalLM(config)  # built on CPU: identical weights on every device
    return model.to(device=C.ARGS.device, dtype=dtype).train()


def run_once(model, features, *, shared=False, packed=False, chunk=0, trl=False, grad=True, leak=False):
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.set_grad_enabled(grad):
        if trl:
            batch = to_device(trl_features(features), C.ARGS.device)
            loss, chosen, rejected, nll = trl_loss(trl_trainer(C.ARGS.device), model, batch)
            processed = 2 * max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1]) * len(features)
        else:
            batch = to_device(collate(features, shared, packed), C.ARGS.device)
            if leak:  # negative control: no branch ids, so rejected tokens see the chosen ones
                batch["branch_ids"] = torch.zeros_like(batch["branch_ids"])
            loss, chosen, rejected, nll = ours_loss(model, batch, chunk)
            processed = batch["input_ids"].numel()
        if grad:
            loss.backward()
    sync()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None} if grad else {}
    unique = sum(len(f["prompt_input_ids"]) + len(f["chosen_input_ids"]) + len(f["rejected_input_ids"]) for f in features)
    return dict(loss=loss.detach().float(), chosen_logps=chosen.detach().float(), rejected_logps=rejected.detach().float(),
                nll=nll.detach().float(), grads=grads, processed=processed, unique=unique,
                seconds=time.perf_counter() - start)


def compare(got: dict, ref: dict) -> dict:
    out = {k: rel(got[k], ref[k]) for k in ("loss", "chosen_logps", "rejected_logps", "nll")}
    if got["grads"]:
        if set(got["grads"]) != set(ref["grads"]):
            out["grad_keys_mismatch"] = sorted(set(got["grads"]) ^ set(ref["grads"]))[:10]
        worst, worst_name = 0.0, None
        for name, g in ref["grads"].items():
            if name not in got["grads"]:
                worst, worst_name = float("inf"), name
                continue
            r = rel(got["grads"][name], g)
            if r > worst or worst_name is None:
                worst, worst_name = r, name
        out["grads"] = worst
        out["grads_worst_param"] = worst_name
    return out


VARIANTS = {
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


def section1() -> None:
    res = RESULTS["section1"]
    n, prompt, comp = (4, (20, 120), (5, 60)) if C.ARGS.quick else (8, (20, 300), (5, 120))
    features = random_pairs(n, prompt, comp, comp, 49152, seed=7)
    res["setup"] = dict(pairs=n, prompt=prompt, completions=comp, vocab=49152, tol=C.ARGS.tol,
                        metric="max|diff| / max|reference| per tensor; grads: worst parameter",
                        tf32=dict(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32))
    res["variants"] = []
    cpu = C.ARGS.device == "cpu"
    if cpu and C.ARGS.quick:  # CPU: one static flex compile per shape (its dynamic-shape compile fails, then retries)
        torch._dynamo.config.automatic_dynamic_shapes = False
    for dtype, bar in ((torch.float32, C.ARGS.tol), (torch.bfloat16, None)):
        dname = str(dtype).replace("torch.", "")
        if dtype is torch.bfloat16 and cpu and C.ARGS.quick:
            res["variants"].append(dict(name=f"{dname} variants", skipped="CPU --quick: bf16 has no pass bar"))
            continue
        if dtype is torch.bfloat16 and elapsed() > 0.45 * C.ARGS.budget_s:
            res["variants"].append(dict(name=f"{dname} variants", skipped=f"budget: {elapsed():.0f}s elapsed"))
            log("section 1: skipping the bf16 variants (budget)")
            continue
        try:
            log(f"section 1 [{dname}]: reference (sdpa, TRL's padded layout, no chunking)")
            ref = run_once(tiny_model("sdpa", dtype), features)
            res[f"reference_{dname}"] = dict(loss=ref["loss"].item(), nll=ref["nll"].item(), processed=ref["processed"],
                                             unique=ref["unique"], seconds=ref["seconds"])
        except Exception:
            res[f"reference_{dname}"] = dict(error=record_error(f"section1 reference {dname}"))
            continue
        for name, attn, kw in VARIANTS[dname]:
            entry = dict(name=name, dtype=dname, attn=attn, **kw)
            res["variants"].append(entry)
            run_variant(entry, kw, dtype, features, ref, bar)
            save()
    summarise(res, features)


def run_variant(entry: dict, kw: dict, dtype, features, ref: dict, bar) -> None:
    """One variant against the reference, its differences and verdict written into ``entry``."""
    name, attn = entry["name"], entry["attn"]
    flex = attn == "flex_attention"
    if flex and C.ARGS.skip_flex:
        entry["skipped"] = "--skip-flex"
        return
    if flex and remaining() < 60:
        entry["skipped"] = f"budget: {remaining():.0f}s left"
        log(f"section 1: skip {name} ({entry['skipped']})")
        return
    forward_only = flex and C.ARGS.device == "cpu"  # FlexAttention has no backward on CPU
    if forward_only:
        entry["note"] = "forward only: FlexAttention has no backward on CPU"
    try:
        log(f"section 1 [{entry['dtype']}]: {name}" + (" (flex compiles for each new shape)" if flex else ""))
        got = run_retrying(entry, dtype, features, grad=not forward_only, **kw)
        diffs = compare(got, ref)
        entry.update(diffs, processed=got["processed"], unique=got["unique"], seconds=round(got["seconds"], 2))
        worst = max(v for k, v in diffs.items() if isinstance(v, float))
        entry["max_rel"] = worst
        entry["pass"] = None if bar is None else bool(worst <= bar)
        if kw.get("leak") and bar is not None:
            entry["as_expected"] = not entry["pass"]
        log(f"    max rel {worst:.2e} (loss {diffs['loss']:.1e}, logps {max(diffs['chosen_logps'], diffs['rejected_logps']):.1e}, "
            f"nll {diffs['nll']:.1e}, grads {fmt(diffs.get('grads'), '.1e') if 'grads' in diffs else 'not computed'}) "
            f"{'' if bar is None else ('PASS' if entry['pass'] else 'FAIL')}")
    except Exception:
        entry["error"] = record_error(f"section1 {name}")
        free()


def run_retrying(entry: dict, dtype, features, **kw) -> dict:
    """`run_once`; a flex variant whose dynamic-shape compile fails is retried with static shapes."""
    flex = entry["attn"] == "flex_attention"
    try:
        return run_once(tiny_model(entry["attn"], dtype), features, **kw)
    except Exception:
        if not (flex and torch._dynamo.config.automatic_dynamic_shapes):
            raise
    # a second batch shape makes dynamo recompile flex with dynamic shapes, as real training (a new width
    # every batch) does; if that fails, say so and retry with static shapes
    entry["dynamic_shapes_error"] = record_error(f"section1 {entry['name']} (dynamic-shape flex compile)")
    log("    retrying with static shapes (torch._dynamo.reset(), automatic_dynamic_shapes=False)")
    free()
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.reset()
    entry["retried_static_shapes"] = True
    return run_once(tiny_model(entry["attn"], dtype), features, **kw)


def summarise(res: dict, features) -> None:
    """The float32 verdict; if a flex variant failed, whether transformers' own flex mask fails too."""
    bars = [v for v in res["variants"] if v.get("dtype") == "float32" and "pass" in v]
    res["all_float32_pass"] = bool(bars) and all(v["as_expected"] if v.get("leak") else v["pass"] for v in bars)
    res["float32_not_run"] = [v["name"] for v in res["variants"] if v.get("dtype") == "float32" and "pass" not in v]
    # diagnostic: if a flex variant failed the bar, is it flex's numerics (transformers' own mask) or our mask?
    failed_flex = [v for v in res["variants"] if v.get("attn") == "flex_attention" and v.get("pass") is False]
    if failed_flex and remaining() > 60:
        entry = dict(name="diagnostic: flex plain padded (transformers' own BlockMask)", dtype="float32", attn="flex_attention")
        res["variants"].append(entry)
        try:
            ref = run_once(tiny_model("sdpa", torch.float32), features)
            got = run_once(tiny_model("flex_attention", torch.float32), features, grad=C.ARGS.device != "cpu")
            diffs = compare(got, ref)
            entry.update(diffs, max_rel=max(v for v in diffs.values() if isinstance(v, float)))
            log(f"    flex padded diagnostic: max rel {entry['max_rel']:.2e}")
        except Exception:
            entry["error"] = record_error("section1 flex diagnostic")
    save()
