"""Preprocessing throughput: ``prepare_preference_dataset`` against TRL's ``ORPOTrainer.tokenize_row``.

``python benchmarks/preprocess.py [--repeats N]`` prints JSON. Data: the English and Chinese
LLaMA-Factory ShareGPT pairs the project writes (``tests/assets/pairs/sharegpt_{en,zh}.json``), in
the conversational layout; tokenizer: the SmolLM2 tokenizer of ``make assets`` (ChatML template);
limits: the library defaults (max_length 1024, max_prompt_length 512); ``num_proc`` None (one process).

- ``ours_cold``: ``prepare_preference_dataset`` on a file-backed copy of the rows in a NEW datasets
  cache directory each repeat, so nothing is cached: render, validate, tokenise, truncate, write
  the Arrow cache file. Best of ``repeats``; ``first_call`` is the first such call for that file
  in this process (it also pays one-off warm-ups: template compilation, new characters' checks).
- ``ours_warm_cached``: the same call again on the same directory: the datasets cache file is
  loaded (validation and the cache key still run). A cached number, NOT a throughput.
- ``trl_tokenize_row``: TRL 1.9's ``trl.experimental.orpo.ORPOTrainer.tokenize_row`` on the same
  rows, called in a plain loop (no ``Dataset.map`` overhead, which favours TRL), on the
  prompt / chosen / rejected strings its trainer would see: ``maybe_apply_chat_template`` renders
  them BEFORE the clock starts, so only ``tokenize_row`` is timed (ours includes rendering).
- ``ours_with_plain_tokenizer_call_cold``: the same cold call with one plain ``tokenizer(texts)``
  call in place of ``TextEncoder`` (the tokenisation before this change), in the same run.
- ``encode_step``: the tokenisation alone on the rendered texts: one plain ``tokenizer(texts)``
  call against ``TextEncoder``, the piece-by-piece encoder ``prepare_preference_dataset`` uses;
  ``encode_step.floor``: the rendering, word split and BPE that any exact pipeline must do, timed
  alone, and the pairs/s ceiling they set (``measure_floor``).

Every timed call starts from an empty Rust BPE cache (the tokenizer model keeps one across calls).
Rates are pairs per second of wall-clock time, ``*_cpu_*`` ones of this process's CPU time (less
skewed when other jobs share the cores); ``load_average_1m`` tells how busy the machine was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("WANDB_MODE", "offline"),
    ("AXOLOTL_DO_NOT_TRACK", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),  # as `make` runs everything
):
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a file: `python benchmarks/preprocess.py`
TOKENIZER_DIR = REPO / ".assets" / "tokenizers" / "smollm2"  # `make assets`
DATASETS = {  # written by the project (tests/assets/pairs/build.py), LLaMA-Factory's ShareGPT layout
    "llamafactory_en": REPO / "tests" / "assets" / "pairs" / "sharegpt_en.json",
    "llamafactory_zh": REPO / "tests" / "assets" / "pairs" / "sharegpt_zh.json",
}
LIMITS = dict(max_length=1024, max_prompt_length=512)  # prepare_preference_dataset's defaults
ROLES = {"system": "system", "human": "user", "gpt": "assistant"}  # ShareGPT speakers, as LLaMA-Factory maps them


def load_rows(path: Path) -> list[dict]:
    """LLaMA-Factory ShareGPT pairs -> conversational rows (history = prompt, gpt turns = answers)."""

    def messages(turns: list[dict]) -> list[dict]:
        return [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]

    raw = json.loads(path.read_text())
    return [{"prompt": messages(r["conversations"]), "chosen": messages([r["chosen"]]),
             "rejected": messages([r["rejected"]])} for r in raw]


def _timed(fn, tokenizer) -> tuple[float, float]:
    """(wall, CPU) seconds ``fn()`` takes, from an empty BPE cache (the Rust model keeps one across calls).

    CPU seconds of this process are reported beside wall time: on a shared machine other jobs take
    cores and stretch the wall time, much less the CPU time.
    """
    model = tokenizer.backend_tokenizer.model
    if hasattr(model, "_clear_cache"):
        model._clear_cache()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class _PlainEncoder:
    """Stands in for ``TextEncoder``: every text through one plain tokenizer call, as before it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str]) -> list[list[int]]:
        from merlina_orpo_plugin.data.encoding import encode_texts

        return encode_texts(self.tokenizer, texts)


def _cold_and_warm(source, tokenizer) -> tuple[tuple[float, float], tuple[float, float]]:
    """(cold, warm) (wall, CPU) seconds of ``prepare_preference_dataset`` on a file-backed copy in a new directory."""
    import datasets

    from merlina_orpo_plugin.data import prepare_preference_dataset

    with tempfile.TemporaryDirectory(prefix="preprocess-bench-") as tmp:
        source.save_to_disk(f"{tmp}/raw")
        raw = datasets.load_from_disk(f"{tmp}/raw")  # file-backed: `map` writes its cache file beside it
        cold = _timed(lambda: prepare_preference_dataset(raw, tokenizer, **LIMITS), tokenizer)
        warm = _timed(lambda: prepare_preference_dataset(raw, tokenizer, **LIMITS), tokenizer)
        assert len(list(Path(tmp, "raw").glob("cache-*.arrow"))) == 1  # the cold call wrote it, the warm one read it
    return cold, warm


def measure_ours(rows: list[dict], tokenizer, repeats: int) -> dict:
    """Cold (new cache directory each time) and warm (cache file present) ``prepare_preference_dataset``,
    and cold with the plain tokenizer call instead of ``TextEncoder`` (same run, same machine load)."""
    import datasets

    import merlina_orpo_plugin.data.pipeline as data  # the module whose `TextEncoder` the pipeline calls

    source = datasets.Dataset.from_list(rows)
    cold, warm, plain = [], [], []
    for _ in range(repeats):
        seconds = _cold_and_warm(source, tokenizer)
        cold.append(seconds[0])
        warm.append(seconds[1])
        data.TextEncoder, encoder = _PlainEncoder, data.TextEncoder
        try:
            plain.append(_cold_and_warm(source, tokenizer)[0])
        finally:
            data.TextEncoder = encoder
    pairs = len(rows)
    walls = [wall for wall, _ in cold]
    return {
        "ours_cold_pairs_per_s": round(pairs / min(walls), 1),
        "ours_cold_median_pairs_per_s": round(pairs / statistics.median(walls), 1),
        "ours_cold_first_call_pairs_per_s": round(pairs / walls[0], 1),
        "ours_cold_seconds": [round(t, 4) for t in walls],
        "ours_cold_cpu_pairs_per_s": round(pairs / min(cpu for _, cpu in cold), 1),
        "ours_with_plain_tokenizer_call_cold_pairs_per_s": round(pairs / min(wall for wall, _ in plain), 1),
        "ours_with_plain_tokenizer_call_cold_cpu_pairs_per_s": round(pairs / min(cpu for _, cpu in plain), 1),
        "ours_warm_cached_pairs_per_s": round(pairs / min(wall for wall, _ in warm), 1),
    }


def trl_features(rows: list[dict], tokenizer) -> list[dict]:
    """The prompt / chosen / rejected strings TRL's ORPO trainer tokenises (rendered, not timed)."""
    from trl.data_utils import maybe_apply_chat_template

    return [maybe_apply_chat_template(row, tokenizer) for row in rows]


def measure_trl(features: list[dict], tokenizer, repeats: int) -> dict:
    """TRL's ``tokenize_row`` on every row, best of ``repeats``; rows it rejects are counted."""
    with warnings.catch_warnings():  # "importing from trl.experimental" is expected here
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOTrainer

    trainer = object.__new__(ORPOTrainer)  # tokenize_row reads only these attributes
    trainer.processing_class, trainer.is_encoder_decoder, trainer.max_length = tokenizer, False, LIMITS["max_length"]
    rejected = 0

    def run() -> None:
        nonlocal rejected
        rejected = 0
        for feature in features:
            try:
                trainer.tokenize_row(feature)
            except ValueError:  # "Chosen and rejected prompt_input_ids might only differ on the last token"
                rejected += 1

    times = [_timed(run, tokenizer) for _ in range(repeats)]
    return {
        "trl_tokenize_row_pairs_per_s": round(len(features) / min(wall for wall, _ in times), 1),
        "trl_tokenize_row_cpu_pairs_per_s": round(len(features) / min(cpu for _, cpu in times), 1),
        "trl_rows_rejected": rejected,
    }


def measure_encode_step(rows: list[dict], tokenizer, repeats: int) -> dict:
    """Tokenisation alone: one plain tokenizer call against ``TextEncoder`` on the same texts, and the
    floor: the three steps no exact implementation skips, each timed on its own (``floor``)."""
    import datasets

    from merlina_orpo_plugin.data.encoding import TextEncoder, encode_texts
    from merlina_orpo_plugin.data.formats import Layout, render_batch

    batch = datasets.Dataset.from_list(rows)[:]
    texts = [t for part in render_batch(batch, Layout.CONVERSATIONAL, tokenizer) for t in part]
    plain = min(_timed(lambda: encode_texts(tokenizer, texts), tokenizer)[0] for _ in range(repeats))
    # a new encoder each repeat: no word cache carried over
    pieces = min(_timed(lambda: TextEncoder(tokenizer)(texts), tokenizer)[0] for _ in range(repeats))
    return {"texts": len(texts), "chars": sum(map(len, texts)), "plain_tokenizer_call_s": round(plain, 4),
            "text_encoder_s": round(pieces, 4), "speedup": round(plain / pieces, 2),
            "floor": measure_floor(batch, texts, tokenizer, repeats)}


def measure_floor(batch: dict, texts: list[str], tokenizer, repeats: int) -> dict:
    """Seconds of the work any exact preprocessing of these pairs must do, each step best of ``repeats``:

    - ``render_s``: the chat template, three renders per pair (prompt, prompt + chosen, prompt +
      rejected), with transformers' own renderer;
    - ``split_s``: the byte-level word split of each DISTINCT text piece once (Python ``re``, about
      10x Rust's splitter on this text);
    - ``bpe_s``: the tokenizer's own Rust BPE model on each DISTINCT word once, in one call.

    ``ceiling_pairs_per_s`` = pairs / their sum: the most any exact single-process pipeline could
    reach here even if joining ids, truncating, hashing and writing Arrow cost nothing; two
    processes could at best double it.
    """
    from tokenizers import Tokenizer, pre_tokenizers

    from merlina_orpo_plugin.data.encoding import _plan
    from merlina_orpo_plugin.data.formats import Layout, render_batch

    plan = _plan(tokenizer)
    if plan is None or plan.words is None:
        return {"skipped": "the tokenizer is not plain byte-level BPE"}
    render = min(_timed(lambda: render_batch(batch, Layout.CONVERSATIONAL, tokenizer), tokenizer)[0] for _ in range(repeats))
    distinct = list({p for text in texts for p in plan.pieces(text)}.difference(plan.known))
    split = min(_timed(lambda: [plan.words.split(p) for p in distinct], tokenizer)[0] for _ in range(repeats))
    words = list({w for p in distinct for w in plan.words.split(p) or ()})
    bpe_only = Tokenizer(tokenizer.backend_tokenizer.model)  # the same model; bytes mapped, no split
    bpe_only.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe = min(
        _timed(lambda: bpe_only.encode(words, is_pretokenized=True, add_special_tokens=False), tokenizer)[0]
        for _ in range(repeats)
    )
    total = render + split + bpe
    return {"distinct_piece_chars": sum(map(len, distinct)), "distinct_words": len(words),
            "render_s": round(render, 4), "split_s": round(split, 4), "bpe_s": round(bpe, 4),
            "ceiling_pairs_per_s": round(len(texts) / 3 / total, 1)}


def measure_preprocessing(repeats: int = 3) -> dict:
    """Throughput of our preprocessing and of TRL's ``tokenize_row`` on the LLaMA-Factory pairs."""
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    load_at_start = round(os.getloadavg()[0], 2)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    results = {}
    for name, path in DATASETS.items():
        if not path.exists():
            continue
        rows = load_rows(path)
        entry = {"pairs": len(rows), **measure_ours(rows, tokenizer, repeats)}
        entry.update(measure_trl(trl_features(rows, tokenizer), tokenizer, repeats))
        entry["speedup_cold_vs_trl"] = round(entry["ours_cold_pairs_per_s"] / entry["trl_tokenize_row_pairs_per_s"], 2)
        entry["speedup_cold_vs_trl_cpu"] = round(
            entry["ours_cold_cpu_pairs_per_s"] / entry["trl_tokenize_row_cpu_pairs_per_s"], 2
        )
        entry["encode_step"] = measure_encode_step(rows, tokenizer, repeats)
        results[name] = entry
    return {
        "tokenizer": str(TOKENIZER_DIR.relative_to(REPO)),
        "limits": LIMITS,
        "num_proc": None,
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "rows": "every pair of each file, conversational layout (ShareGPT history -> prompt)",
        "load_average_1m": {"start": load_at_start, "end": round(os.getloadavg()[0], 2)},
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        "datasets": results,
        "notes": [
            "ours_cold*: prepare_preference_dataset, new datasets cache dir each repeat (render + validate + "
            "tokenise + truncate + write the cache file); pairs/s of the best repeat unless named otherwise",
            "ours_warm_cached_pairs_per_s: the datasets cache file is reused; a cached number, not a throughput",
            "trl_tokenize_row_pairs_per_s: only TRL's tokenize_row is timed; rendering with maybe_apply_chat_template "
            "happens before the clock starts",
            "*_cpu_*: the same from this process's CPU seconds, less skewed than wall time on a busy machine",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write <machine>-preprocess.json here")
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # libraries' log lines must not break the JSON on stdout
        results = measure_preprocessing(args.repeats)
    from benchmarks.report import environment, machine_slug, scrub

    results = scrub({"command": "python benchmarks/preprocess.py " + " ".join(sys.argv[1:]),
                     "environment": environment("cpu"), **results})
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{machine_slug('cpu')}-preprocess.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
