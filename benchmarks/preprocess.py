"""Preprocessing throughput: ``prepare_preference_dataset`` (cold, warm, and cold with a plain tokenizer
call) against TRL's ``ORPOTrainer.tokenize_row``, and the tokenisation alone with the floor any exact
pipeline pays, on the English and Chinese ShareGPT pairs (conversational layout, the SmolLM2 ChatML
template, the package's default limits, one process). Prints JSON; each field is described under
"Preprocessing" in README.md here. Every timed call starts from an empty Rust BPE cache."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from .workload import LIMITS, PAIRS, REPO, TOKENIZER_DIR, load_tokenizer

DATASETS = {"llamafactory_en": PAIRS, "llamafactory_zh": PAIRS.with_name("sharegpt_zh.json")}
ROLES = {"system": "system", "human": "user", "gpt": "assistant"}  # ShareGPT speakers, as LLaMA-Factory maps them


def add_arguments(p) -> None:
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, help="also write <machine>-preprocess.json here")


def load_rows(path: Path) -> list[dict]:
    """LLaMA-Factory ShareGPT pairs -> conversational rows (history = prompt, gpt turns = answers)."""

    def messages(turns: list[dict]) -> list[dict]:
        return [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]

    raw = json.loads(path.read_text())
    return [{"prompt": messages(r["conversations"]), "chosen": messages([r["chosen"]]),
             "rejected": messages([r["rejected"]])} for r in raw]


def _timed(fn, tokenizer) -> tuple[float, float]:
    """(wall, CPU) seconds ``fn()`` takes, from an empty BPE cache (the Rust model keeps one across calls);
    on a shared machine other jobs stretch the wall time, much less this process's CPU time."""
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
    """Seconds of the work any exact preprocessing must do, each best of ``repeats`` (README.md here):
    rendering (``render_s``), the word split (``split_s``) and BPE (``bpe_s``) of each distinct piece once."""
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

    datasets.disable_progress_bars()
    load_at_start = round(os.getloadavg()[0], 2)
    tokenizer = load_tokenizer()
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


def main(args) -> int:
    with contextlib.redirect_stdout(sys.stderr):  # libraries' log lines must not break the JSON on stdout
        results = measure_preprocessing(args.repeats)
    from .report import command, environment, machine_slug, scrub, write_result

    results = scrub({"command": command("preprocess", args.argv), "environment": environment("cpu"), **results})
    print(json.dumps(results, indent=2))
    if args.out:
        write_result(args.out / f"{machine_slug('cpu')}-preprocess", results)
    return 0
