"""The benchmark model: a Llama built from a config with seeded weights, saved once per vocabulary
so every implementation (and Axolotl's loader) starts from the same checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

from .workload import TOKENIZER_DIR

#: name -> LlamaConfig overrides. "cpu": the default CPU model; "smoke": smallest; "cuda": a few
#: hundred million parameters for an H100/H200 (about 0.33B at vocab 49,152, 0.5B at 128,256).
SIZES = {
    "smoke": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "cpu": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    "cuda": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=8),
}


def llama_config(size: str, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        bos_token_id=1,  # SmolLM2: <|im_start|>
        eos_token_id=2,  # <|im_end|>, also the pad token
        pad_token_id=2,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        **SIZES[size],
    )


def build_model_dir(path: Path, size: str, vocab_size: int, seed: int = 0) -> dict:
    """Save a float32 Llama with seeded weights and the SmolLM2 tokenizer files into ``path``.

    With vocab 128,256 the token ids still come from the 49,152-token SmolLM2 tokenizer; only the
    embedding and the head are wider (the cost a Llama 3 vocabulary puts on the logits).
    """
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(size, vocab_size)).to(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    del model
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (TOKENIZER_DIR / name).exists():
            shutil.copy(TOKENIZER_DIR / name, path / name)
    return {"size": size, "vocab_size": vocab_size, "params": params, **SIZES[size], "path": str(path)}
