"""One-shot GPU check of the ORPO speed features (shared prompt, packed rows, chunked loss).

    python -m benchmarks.gpu_check [--device cuda] [--quick] [--sections 1,2,3] [--peak-tflops 989]
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

Modules: ``__main__`` (options, environment, the run), ``common`` (shared state and helpers),
``equivalence`` (section 1), ``speed`` (section 2), ``loss_memory`` (section 3), ``report`` (Markdown).
Imports nothing from other ``benchmarks`` modules (the folder can be carried alone); ``common`` puts
the repository root on ``sys.path`` itself.
"""
