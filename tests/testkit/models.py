"""Tiny models built in-process from a config (2-layer Llama, Mistral, T5, BART), saved with their
tokenizer for Axolotl, and the training arguments of the fast CPU tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from .tokenizers import seq2seq_tokenizer, smollm2_dir

#: Sizes for tiny models loaded in 4 bits: every linear layer's sizes a multiple of 128 (q 256, k/v 128,
#: o 128, gate/up 256, down 128), as in real checkpoints. On CPUs with AVX512-BF16 / AMX, bitsandbytes
#: evaluates 4-bit layers with a kernel that needs output sizes in multiples of 32; narrower toy heads
#: make the suite's outcome depend on the CPU it runs on.
QUANTIZABLE_SIZES = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64)


def tiny_llama_config(vocab_size: int = 49152, **overrides):
    """A 2-layer Llama config; SmolLM2's vocabulary and special ids unless told otherwise."""
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_llama(seed: int = 0, dtype=None, **overrides):
    """A fresh tiny Llama (about 0.2 s): its weights depend on ``seed`` and the config only."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides))
    return model if dtype is None else model.to(dtype)


def tiny_t5(seed: int = 0):
    """A 2-layer T5 over SmolLM2's vocabulary, for `seq2seq_tokenizer()`."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(
        vocab_size=49152, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, dropout_rate=0.0,
        pad_token_id=0, eos_token_id=2, decoder_start_token_id=0))


def tiny_bart(seed: int = 0):
    """A 2+2-layer BART over SmolLM2's vocabulary, for `seq2seq_tokenizer(bos=True)`."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    return BartForConditionalGeneration(BartConfig(
        vocab_size=49152, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0, attention_dropout=0.0,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None))


def tiny_model_dir(path: Path, architecture: str = "llama", **overrides) -> Path:
    """A saved 2-layer Llama (or Mistral) with the real SmolLM2 tokenizer files beside it.

    Its linear sizes are multiples of 128 (`QUANTIZABLE_SIZES`), so the QLoRA runs evaluate on every CPU.
    """
    tokenizer_dir = smollm2_dir()
    if not (path / "config.json").exists():
        params = dict(QUANTIZABLE_SIZES, tie_word_embeddings=True)
        params.update(overrides)
        if architecture == "mistral":
            import torch
            from transformers import MistralConfig, MistralForCausalLM

            config = MistralConfig(**{**tiny_llama().config.to_dict(), **params, "model_type": "mistral"})
            torch.manual_seed(0)
            MistralForCausalLM(config).save_pretrained(path)
        else:
            tiny_llama(seed=0, **params).save_pretrained(path)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(tokenizer_dir / name, path / name)
    return path


def tiny_t5_dir(path: Path) -> Path:
    """A saved 2-layer T5 with SmolLM2's vocabulary and a T5-style tokenizer (`text <|im_end|>`) beside it."""
    if not (path / "config.json").exists():
        tiny_t5().save_pretrained(path)
        seq2seq_tokenizer().save_pretrained(path)
    return path


def orpo_args(tmp_path, **overrides):
    """ORPOConfig for fast CPU tests: no saving, no reporting, float32 without recomputation, a few steps."""
    from merlina_orpo_plugin import ORPOConfig

    kwargs = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        learning_rate=1e-3,
        max_steps=2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        bf16=False,  # TRL's defaults turn both on; the tests compare float32 numbers
        gradient_checkpointing=False,
    )
    kwargs.update(overrides)
    return ORPOConfig(**kwargs)
