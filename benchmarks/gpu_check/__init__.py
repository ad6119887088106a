"""One-shot GPU check of correctness: the layouts' equivalence, the loss's memory, the trainer end to end.

    python -m benchmarks.gpu_check [--device cuda] [--quick] [--sections 1,2] [--trainer] [--out DIR]

1. Equivalence, float32: a tiny Llama, random pairs; TRL's padded layout with sdpa and no chunking
   is the reference; sdpa / flex_attention / eager with shared prompt and/or packing and/or the
   chunked loss, and TRL 1.9's own ``ORPOTrainer`` loss path, must give the same loss, log-probs,
   NLL and gradients to ``--tol`` (1e-5, max |diff| / max |reference|); a mask that lets rejected
   tokens see the chosen ones must fail. TF32 off. Also bf16 numbers (no pass bar; not on CPU --quick).
2. The loss alone at vocab 128,256 (bf16 on CUDA): TRL's full logits against our chunked and
   unchunked paths (`benchmarks.loss_memory`), peak memory and loss.
``--trainer`` (`trainer_check`): ``MerlinaORPOTrainer.train()`` with logging every step,
   ``evaluate()``, ``save_model()``, and a resume from step 2 with the same losses at steps 3-4;
   full fine-tune, LoRA and QLoRA, bf16, gradient accumulation 2; then ``axolotl train`` with the
   plugin where Axolotl is installed. Parts whose packages are absent are skipped with the reason.

Speed lives in the benchmark harness (``python -m benchmarks.run --device cuda``), not here.
Results: ``<out>/<machine>-gpu-check.{json,md}`` (``-trainer-check`` for ``--trainer`` alone,
``-quick`` added with ``--quick``), the JSON rewritten after every measurement; ``<out>`` is
``--out``, else ``$OUT``, else ``benchmarks/results``.

Modules: ``__main__`` (options, environment, the run), ``common`` (shared state and helpers),
``equivalence`` (1), ``loss_memory`` (2), ``trainer_check``, ``report`` (Markdown). On the GPU
machine ``device_run.sh`` runs everything; ``fetch_wheels.sh`` prepares the wheels it carries.
"""
