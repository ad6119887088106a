"""The benchmark model: a Llama built from a config with seeded weights, saved once per vocabulary so
every implementation (and Axolotl's loader) starts from the same checkpoint; and the LoRA setting."""

from __future__ import annotations

import shutil
from pathlib import Path

from .workload import TOKENIZER_DIR

#: scale -> LlamaConfig overrides. ``gpu``: Llama-3.2-1B's shape (1.24B parameters, tied embeddings,
#: vocab 128,256), bf16; ``cpu``: a 28M-parameter Llama at vocab 49,152, float32; ``smoke``: smallest
#: (every projection a multiple of 32 wide, which bitsandbytes' 4-bit CPU kernel needs for QLoRA).
SIZES = {
    "smoke": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, tie_word_embeddings=False),
    "cpu": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=4, tie_word_embeddings=False),
    "gpu": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, tie_word_embeddings=True, rope_theta=500000.0),
}
DEFAULT_VOCABS = {"smoke": (49152,), "cpu": (49152,), "gpu": (128256,)}
#: LoRA r 16 on every projection (Axolotl's ``lora_target_linear: true``), no dropout.
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def llama_config(scale: str, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=8192,
        bos_token_id=1,  # SmolLM2: <|im_start|>
        eos_token_id=2,  # <|im_end|>, also the pad token
        pad_token_id=2,
        **SIZES[scale],
    )


def build_model_dir(path: Path, scale: str, vocab_size: int, device: str, seed: int = 0) -> dict:
    """Save a Llama with seeded weights (bf16 on CUDA, float32 on CPU) and the SmolLM2 tokenizer files.

    With vocab 128,256 the token ids still come from the 49,152-token SmolLM2 tokenizer; only the
    embedding and the head are wider (the cost a Llama 3 vocabulary puts on the logits).
    """
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):  # the 1B model initialises in seconds on the GPU, minutes on a CPU
        model = LlamaForCausalLM(llama_config(scale, vocab_size))
    model = model.to(torch.bfloat16 if device == "cuda" else torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    del model
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (TOKENIZER_DIR / name).exists():
            shutil.copy(TOKENIZER_DIR / name, path / name)
    return {"scale": scale, "vocab_size": vocab_size, "params": params, **SIZES[scale]}


def add_lora(model):
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(**LORA))


def matmul_params(model) -> int:
    """Parameters that take part in matmuls: all but the input embedding (a lookup), the head
    counted once whether or not it is tied to that embedding. The MFU numerator is 6 x this."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embedding = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    seen, total = set(), 0
    for p in base.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total - embedding.numel() + (head.numel() if head is embedding else 0)
