#!/usr/bin/env python
"""One-shot GPU check of the ORPO speed features (shared prompt, packed rows, chunked loss).

    python benchmarks/gpu_check.py [--device cuda] [--quick] [--sections 1,2,3] [--peak-tflops 989]
                                   [--budget-s 330] [--tol 1e-5] [--out DIR] [--skip-flex]

Sections (each wrapped: a failure prints its traceback and the script goes on):

1. Equivalence, float32: a tiny Llama, 8 random pairs; TRL's padded layout with sdpa and no chunking
   is the reference; sdpa / flex_attention / eager with shared prompt and/or packing and/or the
   chunked loss, and TRL 1.9's own ``ORPOTrainer`` loss path, must give the same loss, log-probs,
   NLL and gradients to ``--tol`` (1e-5, max |diff| / max |reference|). TF32 is off. Also bf16
   numbers (no pass bar).
2. Speed and memory, bf16: a ~0.45B Llama built from config, AdamW (fused) step included, 8 pairs
   per micro-batch, "long-prompt" and "ultrafeedback" shapes, vocab 128256 then 49152: (a) our
   collator in TRL's padded layout, no chunking; (b) sdpa shared+packed+chunk 512; (c) flex_attention
   shared+packed+chunk 512; (d) TRL's ``ORPOTrainer.get_batch_loss_metrics`` itself.
   MFU = 6 * n_params * unique tokens/s / peak FLOP/s: unique tokens (each prompt once + chosen +
   rejected), attention FLOPs ignored.
3. Loss-only memory, vocab 128256: TRL's full-logits loss vs ``scoring.chunked_token_logps``.

Section 3 runs before section 2 (it takes seconds); section 2 takes what is left of ``--budget-s``
(measured from the start of the script), most important shapes first, and skips what would not fit.
Results go to ``$OUT/gpu_check.json`` (rewritten after every measurement) and a Markdown summary is
printed (and written to ``$OUT/gpu_check.md``).

Imports nothing from ``benchmarks``; puts the repository root on ``sys.path`` itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

T0 = time.perf_counter()
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

PAD = 2
BETA = 0.1
RESULTS: dict = {"env": {}, "section1": {}, "section2": {}, "section3": {}, "errors": []}
ARGS = None


# ----------------------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def elapsed() -> float:
    return time.perf_counter() - T0


def remaining() -> float:
    return ARGS.budget_s - elapsed()


def out_dir() -> Path | None:
    if ARGS.out:
        return Path(ARGS.out)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return None


def save() -> None:
    d = out_dir()
    if d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        (d / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    except Exception:  # never let saving kill the run
        traceback.print_exc()


def record_error(where: str) -> str:
    tb = traceback.format_exc()
    print(f"!!! {where} failed:\n{tb}", flush=True)
    RESULTS["errors"].append({"where": where, "traceback": tb[-4000:]})
    save()
    return tb.strip().splitlines()[-1][:300]


def sync() -> None:
    if ARGS.device == "cuda":
        torch.cuda.synchronize()


def free() -> None:
    gc.collect()
    if ARGS.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def random_pairs(n, prompt, chosen, rejected, vocab, seed):
    """``n`` features with lengths uniform in the (lo, hi) ranges; lengths depend on ``seed`` only."""
    lengths = random.Random(seed)
    ids = torch.Generator().manual_seed(seed + 1)

    def seq(lo_hi):
        length = lengths.randint(*lo_hi)
        return torch.randint(3, vocab, (length,), generator=ids).tolist()

    return [dict(prompt_input_ids=seq(prompt), chosen_input_ids=seq(chosen), rejected_input_ids=seq(rejected))
            for _ in range(n)]


def around(center: int, spread: float = 0.25) -> tuple[int, int]:
    return max(1, round(center * (1 - spread))), round(center * (1 + spread))


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def collate(features, shared: bool, packed: bool) -> dict:
    from merlina_orpo_plugin.collator import ORPODataCollator

    return ORPODataCollator(pad_token_id=PAD, prefix_sharing=shared, padding_free=packed)(features)


def trl_features(features) -> dict:
    """TRL's ORPO batch (as its DPO collator pads it): ``{chosen,rejected}_{input_ids,attention_mask,labels}``."""
    batch = {}
    for side in ("chosen", "rejected"):
        ids = [f["prompt_input_ids"] + f[f"{side}_input_ids"] for f in features]
        labels = [[-100] * len(f["prompt_input_ids"]) + f[f"{side}_input_ids"] for f in features]
        width = max(map(len, ids))
        batch[f"{side}_input_ids"] = torch.tensor([x + [PAD] * (width - len(x)) for x in ids])
        batch[f"{side}_attention_mask"] = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        batch[f"{side}_labels"] = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
    return batch


def trl_trainer(device):
    """An ``ORPOTrainer`` without ``__init__``: just the attributes its loss path reads."""
    from trl.experimental.orpo import ORPOTrainer

    trainer = object.__new__(ORPOTrainer)
    trainer.is_encoder_decoder = False
    trainer.padding_value = PAD
    trainer.label_pad_token_id = -100
    trainer.aux_loss_enabled = False
    trainer.aux_loss_coef = 0.0
    trainer.beta = BETA
    trainer.accelerator = SimpleNamespace(device=torch.device(device), gather_for_metrics=lambda x: x)
    return trainer


def ours_loss(model, batch, chunk):
    from merlina_orpo_plugin import losses as L
    from merlina_orpo_plugin.forward import concatenated_forward

    out = concatenated_forward(model, batch, nll_include_prompt=True, loss_chunk_size=chunk)
    loss = L.orpo_loss(out.nll_loss, L.odds_ratio_loss(out.chosen_logps, out.rejected_logps, BETA)[0])
    return loss, out.chosen_logps, out.rejected_logps, out.nll_loss


def trl_loss(trainer, model, batch):
    """TRL's ``get_batch_loss_metrics`` (metrics' ``.item()`` syncs included); its forward outputs captured."""
    captured = {}
    original = type(trainer).concatenated_forward

    def capture(model_, batch_):
        captured["out"] = original(trainer, model_, batch_)
        return captured["out"]

    trainer.concatenated_forward = capture
    try:
        loss, _metrics = trainer.get_batch_loss_metrics(model, batch)
    finally:
        del trainer.concatenated_forward
    chosen, rejected, _, _, nll = captured["out"][:5]
    return loss, chosen, rejected, nll


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (|a - b| where b is all zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    return diff / scale if scale > 0 else diff


# --------------------------------------------------------------------------------- section 1


def tiny_config(attn: str, vocab: int = 49152):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
        tie_word_embeddings=False, attn_implementation=attn,
        # 5x the default init: the default gives near-uniform logits (every log-prob ~ -log V), and then the
        # forward outputs cannot show a layout difference in float32 at all
        initializer_range=0.1,
    )


def tiny_model(attn: str, dtype):
    from transformers import LlamaForCausalLM

    torch.manual_seed(1234)
    model = LlamaForCausalLM(tiny_config(attn))  # built on CPU: identical weights on every device
    return model.to(device=ARGS.device, dtype=dtype).train()


def run_once(model, features, *, shared=False, packed=False, chunk=0, trl=False, grad=True, leak=False):
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.set_grad_enabled(grad):
        if trl:
            batch = to_device(trl_features(features), ARGS.device)
            loss, chosen, rejected, nll = trl_loss(trl_trainer(ARGS.device), model, batch)
            processed = 2 * max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1]) * len(features)
        else:
            batch = to_device(collate(features, shared, packed), ARGS.device)
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


def section1() -> None:
    res = RESULTS["section1"]
    n, prompt, comp = (4, (20, 120), (5, 60)) if ARGS.quick else (8, (20, 300), (5, 120))
    features = random_pairs(n, prompt, comp, comp, 49152, seed=7)
    res["setup"] = dict(pairs=n, prompt=prompt, completions=comp, vocab=49152, tol=ARGS.tol,
                        metric="max|diff| / max|reference| per tensor; grads: worst parameter",
                        tf32=dict(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32))
    res["variants"] = []
    cpu = ARGS.device == "cpu"

    variants32 = [
        ("sdpa shared+packed chunk64", "sdpa", dict(shared=True, packed=True, chunk=64)),
        ("flex shared+packed chunk64", "flex_attention", dict(shared=True, packed=True, chunk=64)),
        ("flex shared", "flex_attention", dict(shared=True)),
        ("flex packed", "flex_attention", dict(packed=True)),
        ("eager shared+packed", "eager", dict(shared=True, packed=True)),
        ("TRL ORPOTrainer (sdpa, padded)", "sdpa", dict(trl=True)),
        ("negative control: sdpa shared, rejected sees chosen (must FAIL)", "sdpa", dict(shared=True, leak=True)),
    ]
    variants16 = [
        ("bf16 sdpa shared+packed chunk64", "sdpa", dict(shared=True, packed=True, chunk=64)),
        ("bf16 flex shared+packed chunk64", "flex_attention", dict(shared=True, packed=True, chunk=64)),
    ]
    for dtype, variants, bar in ((torch.float32, variants32, ARGS.tol), (torch.bfloat16, variants16, None)):
        dname = str(dtype).replace("torch.", "")
        if dtype is torch.bfloat16 and elapsed() > 0.45 * ARGS.budget_s:
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
        for name, attn, kw in variants:
            entry = dict(name=name, dtype=dname, attn=attn, **{k: v for k, v in kw.items()})
            res["variants"].append(entry)
            flex = attn == "flex_attention"
            if flex and ARGS.skip_flex:
                entry["skipped"] = "--skip-flex"
                continue
            if flex and remaining() < 60:
                entry["skipped"] = f"budget: {remaining():.0f}s left"
                log(f"section 1: skip {name} ({entry['skipped']})")
                continue
            forward_only = flex and cpu  # FlexAttention has no backward on CPU
            if forward_only:
                entry["note"] = "forward only: FlexAttention has no backward on CPU"
            try:
                log(f"section 1 [{dname}]: {name}" + (" (flex compiles for each new shape)" if flex else ""))
                try:
                    got = run_once(tiny_model(attn, dtype), features, grad=not forward_only, **kw)
                except Exception:
                    if not (flex and torch._dynamo.config.automatic_dynamic_shapes):
                        raise
                    # a second batch shape makes dynamo recompile flex with dynamic shapes, as real training
                    # (a new width every batch) does; if that fails, say so and retry with static shapes
                    entry["dynamic_shapes_error"] = record_error(f"section1 {name} (dynamic-shape flex compile)")
                    log("    retrying with static shapes (torch._dynamo.reset(), automatic_dynamic_shapes=False)")
                    free()
                    torch._dynamo.config.automatic_dynamic_shapes = False
                    torch._dynamo.reset()
                    entry["retried_static_shapes"] = True
                    got = run_once(tiny_model(attn, dtype), features, grad=not forward_only, **kw)
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
            save()
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
            got = run_once(tiny_model("flex_attention", torch.float32), features, grad=not cpu)
            diffs = compare(got, ref)
            entry.update(diffs, max_rel=max(v for v in diffs.values() if isinstance(v, float)))
            log(f"    flex padded diagnostic: max rel {entry['max_rel']:.2e}")
        except Exception:
            entry["error"] = record_error("section1 flex diagnostic")
    save()


# --------------------------------------------------------------------------------- section 2


def big_config(vocab: int, attn: str):
    from transformers import LlamaConfig

    if ARGS.quick:
        size = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    else:
        size = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8)
    return LlamaConfig(vocab_size=vocab, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
                       tie_word_embeddings=False, attn_implementation=attn, **size)


def build_big(vocab: int, attn: str):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(ARGS.device):
        model = LlamaForCausalLM(big_config(vocab, attn))
    model = model.to(speed_dtype()).train()
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
        fused = True
    except Exception as error:  # e.g. no fused AdamW for this device
        log(f"    fused AdamW unavailable ({error}); using the default implementation")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        fused = False
    return model, opt, fused


def speed_dtype():
    """bf16 on the GPU; float32 on CPU, where bf16 matmuls are very slow (CPU only checks the code path)."""
    return torch.bfloat16 if ARGS.device == "cuda" else torch.float32


#: Section 2 variants by letter: (prefix_sharing, padding_free, loss_chunk_size) of our layouts.
LAYOUTS = {"a": (False, False, 0), "b": (True, True, 512), "c": (True, True, 512), "e": (True, False, 512),
           "f": (True, True, 0), "g": (False, False, 512)}
SPEED_VARIANTS = {
    "a": "a: TRL math, our padded layout (sdpa, no chunk)", "b": "b: sdpa shared+packed chunk512",
    "c": "c: flex shared+packed chunk512", "d": "d: TRL ORPOTrainer.get_batch_loss_metrics (sdpa)",
    "e": "e: sdpa shared (one pair per row) chunk512", "f": "f: sdpa shared+packed, no chunk",
    "g": "g: sdpa padded layout, chunk512",
}


def speed_variant(name: str, vocab: int, features, steps: int, warmup: int) -> dict:
    attn = "flex_attention" if name[0] == "c" else "sdpa"
    cuda = ARGS.device == "cuda"
    free()
    build_start = time.perf_counter()
    model, opt, fused = build_big(vocab, attn)
    n_params = sum(p.numel() for p in model.parameters())
    embed_params = model.get_input_embeddings().weight.numel()
    unique = sum(len(f["prompt_input_ids"]) + len(f["chosen_input_ids"]) + len(f["rejected_input_ids"]) for f in features)
    if name.startswith("d"):
        trainer = trl_trainer(ARGS.device)
        batch = to_device(trl_features(features), ARGS.device)
        processed = 2 * len(features) * max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
        shape = [2 * len(features), processed // (2 * len(features))]

        def loss_fn():
            return trl_loss(trainer, model, batch)[0]
    else:
        shared, packed, chunk = LAYOUTS[name[0]]
        batch = to_device(collate(features, shared, packed), ARGS.device)
        processed = batch["input_ids"].numel()
        shape = list(batch["input_ids"].shape)

        def loss_fn():
            return ours_loss(model, batch, chunk)[0]

    sync()
    after_build = torch.cuda.memory_allocated() if cuda else None
    if cuda:  # the float32 init before the bf16 cast is not training memory
        torch.cuda.reset_peak_memory_stats()
    build_s = time.perf_counter() - build_start

    def step():
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    first_loss, warm_times = None, []
    for i in range(warmup):
        t = time.perf_counter()
        loss = step()
        if i == 0:
            first_loss = loss.item()  # same seed, same pairs: every variant starts from the same loss
        sync()
        warm_times.append(time.perf_counter() - t)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    last_loss = loss.item()
    peak = torch.cuda.max_memory_allocated() if cuda else None
    pairs_s = len(features) / seconds
    unique_s = unique / seconds
    mfu = 6 * n_params * unique_s / (ARGS.peak_tflops * 1e12)
    mfu_no_embed = 6 * (n_params - embed_params) * unique_s / (ARGS.peak_tflops * 1e12)
    del model, opt, batch, loss
    free()
    return dict(variant=name, attn=attn, n_params=n_params, batch_shape=shape, processed_tokens=processed,
                unique_tokens=unique, processed_per_unique=processed / unique, ms_per_step=seconds * 1e3,
                pairs_per_s=pairs_s, unique_tokens_per_s=unique_s, mfu=mfu, mfu_without_input_embedding=mfu_no_embed,
                peak_mem_gib=None if peak is None else peak / 2**30,  # weights, grads, AdamW state, activations
                mem_after_build_gib=None if after_build is None else after_build / 2**30,
                first_step_loss=first_loss, last_step_loss=last_loss, warmup_step_s=[round(t, 2) for t in warm_times],
                build_s=round(build_s, 2), fused_adamw=fused, steps=steps, warmup=warmup)


def section2() -> None:
    res = RESULTS["section2"]
    cpu = ARGS.device == "cpu"
    if ARGS.quick:
        shapes = {"long-prompt": (around(96), around(16)), "ultrafeedback": (around(32), around(32))}
        pairs, warmup, steps, vocabs = 4, 1, 2, (49152,)
    else:
        shapes = {"long-prompt": (around(1024), around(128)), "ultrafeedback": (around(256), around(256))}
        pairs, warmup, steps, vocabs = 8, 3, 8, (128256, 49152)
    try:
        import trl.experimental.orpo  # noqa: F401
        have_trl = True
    except Exception as error:
        have_trl = False
        res["trl_unavailable"] = repr(error)
        log(f"section 2: TRL not importable, variant (d) skipped: {error!r}")
    res["setup"] = dict(pairs_per_micro_batch=pairs, warmup=warmup, steps=steps, dtype=str(speed_dtype())[6:],
                        shapes={k: dict(prompt=v[0], answers=v[1]) for k, v in shapes.items()},
                        peak_tflops=ARGS.peak_tflops, optimizer="AdamW(fused=True), bf16 params",
                        mfu_note="6 * n_params * unique tokens/s / peak; unique tokens = prompt once + chosen + rejected; "
                                 "attention FLOPs ignored; n_params includes both embedding matrices "
                                 "(mfu_without_input_embedding leaves the lookup table out)")
    res["runs"] = []
    # (c) last within a shape: its first run compiles, so the cheap ones are measured first if time runs short
    variants = [SPEED_VARIANTS[k] for k in ARGS.variants.split(",")]
    compiled_shapes: set = set()
    est = {"plain": 25.0, "compile": 80.0}
    # flex: one static compile per batch shape (the batch is the same at every step, so nothing recompiles in
    # the timed steps); section 1's compiles (other head sizes / dtypes) must not leak dynamic shapes here
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.reset()
    res["setup"]["flex_compile"] = "static shapes, one compile per batch shape, kept out of the timing (warm-up)"
    for vocab in vocabs:
        for shape_name, (prompt, answers) in shapes.items():
            features = random_pairs(pairs, prompt, answers, answers, vocab, seed=11 if shape_name == "long-prompt" else 12)
            for variant in variants:
                entry = dict(shape=shape_name, vocab=vocab, variant=variant)
                res["runs"].append(entry)
                if variant.startswith("d") and not have_trl:
                    entry["skipped"] = "trl not importable"
                    continue
                if variant.startswith("c") and ARGS.skip_flex:
                    entry["skipped"] = "--skip-flex"
                    continue
                if variant.startswith("c") and cpu:
                    entry["skipped"] = "FlexAttention has no backward on CPU"
                    log(f"section 2: skip {variant} on CPU (no flex backward)")
                    continue
                key = (shape_name,)  # flex kernels depend on the batch shape, not the vocabulary
                need = est["compile"] if variant.startswith("c") and key not in compiled_shapes else est["plain"]
                if remaining() < need:
                    entry["skipped"] = f"budget: {remaining():.0f}s left, about {need:.0f}s needed"
                    log(f"section 2: skip {shape_name} vocab {vocab} {variant} ({entry['skipped']})")
                    continue
                log(f"section 2: {shape_name} vocab {vocab} {variant}")
                t = time.perf_counter()
                try:
                    entry.update(speed_variant(variant, vocab, features, steps, warmup))
                    if variant.startswith("c"):
                        if key not in compiled_shapes:
                            est["compile"] = max(40.0, 1.3 * (time.perf_counter() - t))
                        compiled_shapes.add(key)
                    else:
                        est["plain"] = max(est["plain"] * 0.5, 1.3 * (time.perf_counter() - t))
                    mem = "n/a" if entry["peak_mem_gib"] is None else f"{entry['peak_mem_gib']:.1f} GiB"
                    log(f"    {entry['ms_per_step']:.0f} ms/step, {entry['pairs_per_s']:.1f} pairs/s, "
                        f"{entry['unique_tokens_per_s']:.0f} unique tok/s, processed/unique {entry['processed_per_unique']:.2f}, "
                        f"peak {mem}, MFU {100 * entry['mfu']:.1f}%, first loss {entry['first_step_loss']:.4f}, "
                        f"warm-up {entry['warmup_step_s']} s")
                except Exception:
                    entry["error"] = record_error(f"section2 {shape_name} {vocab} {variant}")
                    free()
                save()


# --------------------------------------------------------------------------------- section 3


def section3() -> None:
    import torch.nn.functional as F

    from merlina_orpo_plugin.losses import odds_ratio_loss
    from merlina_orpo_plugin.scoring import chunked_token_logps

    res = RESULTS["section3"]
    cuda = ARGS.device == "cuda"
    B, T, H, V, chunk = (2, 256, 256, 32000, 512) if ARGS.quick else (2, 1024, 2048, 128256, 512)
    dtype = torch.bfloat16 if cuda else torch.float32  # CPU bf16 matmuls are very slow; CPU only checks the math
    half = T // 2
    try:
        from trl.experimental.orpo import ORPOTrainer

        get_batch_logps, trl_odds = ORPOTrainer.get_batch_logps, ORPOTrainer.odds_ratio_loss
        source = "trl.experimental.orpo.ORPOTrainer"
    except Exception as error:
        log(f"section 3: TRL not importable ({error!r}); using an inline copy of TRL 1.9's math")
        source = "inline copy of TRL 1.9"
        get_batch_logps, trl_odds = _inline_get_batch_logps, _inline_odds_ratio_loss
    res["setup"] = dict(rows=2 * B, tokens=T, hidden=H, vocab=V, chunk_size=chunk, dtype=str(dtype)[6:], trl_source=source,
                        rows_layout="prompt T/2 tokens (shared by the pair) + answer T/2 tokens, chosen rows first",
                        memory="max_memory_allocated during loss+backward minus memory_allocated before "
                               "(includes the head's weight gradient, the same for both)")
    torch.manual_seed(0)
    device = ARGS.device
    hidden = torch.randn(2 * B, T, H, device=device, dtype=dtype, requires_grad=True)
    head = torch.nn.Linear(H, V, bias=False, device=device, dtype=dtype)
    input_ids = torch.randint(3, V, (2 * B, T), device=device)
    input_ids[B:, :half] = input_ids[:B, :half]

    def trl_side():
        labels = input_ids.clone()
        labels[:, :half] = -100
        logits = head(hidden)
        nll = torch.nn.CrossEntropyLoss()(logits[:B, :-1, :].contiguous().view(-1, V), input_ids[:B, 1:].contiguous().view(-1))
        logps = get_batch_logps(logits, labels, average_log_prob=True)
        stub = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device=hidden.device))
        losses = trl_odds(stub, logps[:B], logps[B:])[0]
        _ = logits[:B, :-1, :].detach().mean(), logits[B:, :-1, :].detach().mean()  # TRL's logits/* metrics
        return nll - losses.mean()

    # the scored positions our collator lists: every position of the chosen rows (NLL + chosen logps),
    # the answer positions of the rejected rows
    pos = torch.arange(T - 1, device=device)
    chosen_idx = (torch.arange(B, device=device)[:, None] * T + pos[None, :]).reshape(-1)
    rejected_idx = ((torch.arange(B, 2 * B, device=device)[:, None]) * T + pos[None, half - 1:]).reshape(-1)
    index = torch.cat([chosen_idx, rejected_idx])
    targets = input_ids.reshape(-1)[index + 1]

    def ours_side():
        selected = hidden.reshape(-1, H).index_select(0, index)
        logps = chunked_token_logps(head, selected, targets, chunk)[0]
        chosen_all = logps[: B * (T - 1)].view(B, T - 1)
        rejected = logps[B * (T - 1):].view(B, T - half)
        nll = -chosen_all.mean()
        losses = odds_ratio_loss(chosen_all[:, half - 1:].mean(-1), rejected.mean(-1), BETA)[0]
        return nll - losses.mean()

    for name, fn in (("trl_full_logits", trl_side), (f"ours_chunked_{chunk}", ours_side)):
        try:
            for attempt in ("warm-up", "measured"):  # warm-up: cuBLAS workspaces etc. are allocated once
                hidden.grad = None
                head.weight.grad = None
                free()
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                t = time.perf_counter()
                loss = fn()
                loss.backward()
                sync()
                seconds = time.perf_counter() - t
                peak = torch.cuda.max_memory_allocated() - before if cuda else None
                value = loss.item()
                del loss
            res[name] = dict(loss=value, seconds=seconds, peak_delta_bytes=peak,
                             peak_delta_gib=None if peak is None else peak / 2**30,
                             grad_hidden_norm=hidden.grad.float().norm().item(),
                             grad_head_norm=head.weight.grad.float().norm().item())
            mem = "n/a on CPU" if peak is None else f"{peak / 2**30:.3f} GiB"
            log(f"section 3: {name}: peak above baseline {mem}, loss {value:.6f}, {seconds * 1e3:.0f} ms")
        except Exception:
            res[name] = dict(error=record_error(f"section3 {name}"))
            free()
        save()
    trl_r, ours_r = res.get("trl_full_logits", {}), res.get(f"ours_chunked_{chunk}", {})
    if trl_r.get("peak_delta_bytes") and ours_r.get("peak_delta_bytes"):
        res["memory_ratio_trl_over_ours"] = trl_r["peak_delta_bytes"] / ours_r["peak_delta_bytes"]
    if "loss" in trl_r and "loss" in ours_r:
        res["loss_rel_diff"] = abs(trl_r["loss"] - ours_r["loss"]) / abs(trl_r["loss"])
    hidden.grad = head.weight.grad = None
    del hidden, head
    free()
    save()


def _inline_get_batch_logps(logits, labels, average_log_prob=False, is_encoder_decoder=False):
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    mask = labels != -100
    labels = torch.where(labels == -100, 0, labels)
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
        per_token = picked - torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    else:  # TRL's selective_log_softmax: row by row for half precision
        per_token = torch.stack([torch.gather(torch.log_softmax(r, -1), -1, l.unsqueeze(-1)).squeeze(-1)
                                 for r, l in zip(logits, labels)])
    return (per_token * mask).sum(-1) / mask.sum(-1) if average_log_prob else (per_token * mask).sum(-1)


def _inline_odds_ratio_loss(self, chosen, rejected):
    from merlina_orpo_plugin.losses import log1mexp

    c, r = chosen.float(), rejected.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    ratio = torch.nn.functional.logsigmoid(log_odds)
    return self.beta * ratio, self.beta * c.detach(), self.beta * r.detach(), ratio.mean(), log_odds.mean()


# --------------------------------------------------------------------------------- report


def fmt(x, spec=".2e"):
    return "-" if x is None else format(x, spec)


def markdown() -> str:
    env = RESULTS["env"]
    lines = [f"# gpu_check: {env.get('device_name', env.get('device'))}, torch {env.get('torch')}, "
             f"transformers {env.get('transformers')}, trl {env.get('trl')}", ""]
    s1 = RESULTS["section1"]
    if s1.get("variants"):
        lines += ["## 1. Equivalence vs sdpa padded unchunked (max |diff| / max |ref|)", "",
                  f"bar {ARGS.tol:g} for float32; TF32 {'off' if not env.get('tf32') else 'on'}; "
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
                  f"MFU = 6 x n_params x unique tokens/s / {ARGS.peak_tflops:g} TFLOP/s: counts unique tokens "
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
    lines.append(f"\nTotal wall time {elapsed():.0f}s (budget {ARGS.budget_s:.0f}s).")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- main


def environment() -> None:
    env = RESULTS["env"]
    env.update(device=ARGS.device, torch=torch.__version__, python=platform.python_version(), quick=ARGS.quick,
               argv=sys.argv[1:])
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except Exception as error:
        env["transformers"] = repr(error)
    try:
        import trl

        env["trl"] = trl.__version__
    except Exception as error:
        env["trl"] = f"not importable: {error!r}"
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)  # flex: one entry per shape
    if ARGS.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        env["device_name"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        env["tf32"] = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    log(f"environment: {json.dumps(env)}")
    save()


def main(argv=None) -> int:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="small sizes (CPU validation of the code paths)")
    p.add_argument("--sections", default="1,2,3", help="comma-separated subset of 1,2,3")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget from start; section 2 skips what would not fit")
    p.add_argument("--tol", type=float, default=1e-5, help="section 1 pass bar (float32)")
    p.add_argument("--out", help="output folder (default: $OUT)")
    p.add_argument("--variants", default="a,b,d,c", help="section 2 variants, letters of SPEED_VARIANTS (default a,b,d,c)")
    p.add_argument("--skip-flex", action="store_true", help="leave the flex_attention variants out (debugging)")
    ARGS = p.parse_args(argv)
    if ARGS.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: run with --device cpu", flush=True)
        return 2
    sections = {s.strip() for s in ARGS.sections.split(",") if s.strip()}
    try:
        environment()
    except Exception:
        record_error("environment")
    # section 3 takes seconds; section 2 then gets whatever is left of the budget
    for number, fn in (("1", section1), ("3", section3), ("2", section2)):
        if number not in sections:
            continue
        log(f"=== section {number} ===")
        try:
            fn()
        except Exception:
            record_error(f"section {number}")
            try:
                free()
            except Exception:
                pass
        save()
    text = markdown()
    print("\n" + text, flush=True)
    d = out_dir()
    if d is not None:
        try:
            (d / "gpu_check.md").write_text(text)
        except Exception:
            traceback.print_exc()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
