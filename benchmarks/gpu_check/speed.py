"""Section 2: speed and memory of a ~0.45B Llama (AdamW step included) in each layout, TRL's loss path too.
"""

from __future__ import annotations

import time

import torch

from . import common as C
from .common import (PAD, RESULTS, around, collate, free, log, ours_loss, random_pairs, record_error, remaining, save,
                     sync, to_device, trl_features, trl_loss, trl_trainer)


def big_config(vocab: int, attn: str):
    from transformers import LlamaConfig

    if C.ARGS.quick:
        size = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    else:
        size = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8)
    return LlamaConfig(vocab_size=vocab, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
                       tie_word_embeddings=False, attn_implementation=attn, **size)


def build_big(vocab: int, attn: str):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(C.ARGS.device):
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
    return torch.bfloat16 if C.ARGS.device == "cuda" else torch.float32


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
    cuda = C.ARGS.device == "cuda"
    free()
    build_start = time.perf_counter()
    model, opt, fused = build_big(vocab, attn)
    n_params = sum(p.numel() for p in model.parameters())
    embed_params = model.get_input_embeddings().weight.numel()
    unique = sum(len(f["prompt_input_ids"]) + len(f["chosen_input_ids"]) + len(f["rejected_input_ids"]) for f in features)
    if name.startswith("d"):
        trainer = trl_trainer(C.ARGS.device)
        batch = to_device(trl_features(features), C.ARGS.device)
        processed = 2 * len(features) * max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
        shape = [2 * len(features), processed // (2 * len(features))]

        def loss_fn():
            return trl_loss(trainer, model, batch)[0]
    else:
        shared, packed, chunk = LAYOUTS[name[0]]
        batch = to_device(collate(features, shared, packed), C.ARGS.device)
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
    mfu = 6 * n_params * unique_s / (C.ARGS.peak_tflops * 1e12)
    mfu_no_embed = 6 * (n_params - embed_params) * unique_s / (C.ARGS.peak_tflops * 1e12)
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
    cpu = C.ARGS.device == "cpu"
    if C.ARGS.quick:
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
                        peak_tflops=C.ARGS.peak_tflops, optimizer="AdamW(fused=True), bf16 params",
                        mfu_note="6 * n_params * unique tokens/s / peak; unique tokens = prompt once + chosen + rejected; "
                                 "attention FLOPs ignored; n_params includes both embedding matrices "
                                 "(mfu_without_input_embedding leaves the lookup table out)")
    res["runs"] = []
    # (c) last within a shape: its first run compiles, so the cheap ones are measured first if time runs short
    variants = [SPEED_VARIANTS[k] for k in C.ARGS.variants.split(",")]
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
                if variant.startswith("c") and C.ARGS.skip_flex:
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
