"""``preprocess-scale``: ours (the Python API, Axolotl's path) against TRL's preprocessing at 10k-200k generated
pairs, each run in a fresh process: time, CPU time and memory. JSON and Markdown; README.md here describes each
field."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import resource
import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np

from merlina_orpo_plugin.data import prepare_preference_dataset

from .impls import MERLINA_PLUGIN, spawn, write_config
from .measure import max_rss_kb, rss_kb
from .report import publish, table
from .workload import LIMITS, MAX_LENGTH, PAIRS, build_model_dir, load_tokenizer

DATASETS = {"llamafactory_en": PAIRS, "llamafactory_zh": PAIRS.with_name("sharegpt_zh.json")}


LAYOUTS = {"text": "prompt_pairs", "messages": "chat_template"}  # layout -> the Axolotl `type:` reading it
PATHS = ("api", "axolotl", "trl")  # `prepare_preference_dataset`, Axolotl's `load_orpo_datasets`, TRL's trainer
SHORT, LONG, LONG_SHARE = ((5, 25), (5, 40)), ((60, 250), (30, 150)), 0.2  # (prompt, answer) words per row
NEW_WORD_SHARE = 0.02
LETTERS = str.maketrans("01234567", "aeioklmr")  # octal digits -> letters: pronounceable new names
PSS = re.compile(r"^(Pss|Pss_Anon|Pss_File):\s+(\d+) kB$", re.M)  # the smaps_rollup lines `CallProbe` samples
COLUMNS = {"seconds": "seconds", "pairs_per_s": "pairs/s", "cpu_us_per_pair": "CPU us/pair",  # of the Markdown
           "peak_rss_mib": "peak RSS MiB", "growth_mib": "growth in the call MiB",  # table: field -> heading
           "anon_peak_mib": "peak anon MiB (PSS)", "file_peak_mib": "peak file MiB (PSS)",
           "cpu_speed_vs_trl": "CPU speed vs TRL", "peak_rss_vs_trl": "peak RSS vs TRL"}


def add_arguments(p) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    p.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallel", type=int, default=1, help="runs side by side, the largest sizes first")
    p.add_argument("--out", type=Path, help="also write <machine>-preprocess-scale.{json,md} here")


def generate_rows(layout: str, seed: int):
    """Endless rows of ``layout``, the same for a seed whatever the size (a smaller file is a prefix). Words are drawn
    with the frequencies of the repository's pair texts, ``NEW_WORD_SHARE`` of them new (numbers, ids, names)."""
    counts = Counter()
    for path in DATASETS.values():
        for row in json.loads(path.read_text(encoding="utf-8")):
            for turn in [*row["conversations"], row["chosen"], row["rejected"]]:
                counts.update(re.findall(r"\s*\S+", turn["value"]))
    vocab, cumulative = np.array(list(counts), dtype=object), np.cumsum(np.fromiter(counts.values(), dtype=np.float64))
    draws, rng, words, at = np.random.default_rng(seed), random.Random(seed), [], 0

    def text(count: int) -> str:
        nonlocal words, at
        if at + count > len(words):  # a new batch of 2**20 draws; the rest of the last one is dropped
            batch = vocab[np.searchsorted(cumulative, draws.random(1 << 20) * cumulative[-1], side="right")]
            for i in np.flatnonzero(draws.random(len(batch)) < NEW_WORD_SHARE):
                n = int(draws.integers(1 << 30))
                batch[i] = (f" {n % 10 ** (1 + n % 6)}" if n % 3 == 0 else f" id_{n:x}" if n % 3 == 1
                            else " " + format(n, "o").translate(LETTERS).title())
            words, at = batch.tolist(), 0
        at += count
        return "".join(words[at - count : at]).strip()

    while True:
        prompt_words, answer_words = LONG if rng.random() < LONG_SHARE else SHORT
        prompt, chosen, rejected = (text(rng.randint(*r)) for r in (prompt_words, answer_words, answer_words))
        if layout == "text":  # the prompt ends with its separator (`prompt_pairs`' contract)
            yield {"prompt": prompt + "\n", "chosen": chosen, "rejected": rejected}
            continue
        turns = [{"role": "user", "content": prompt}]
        if rng.random() < 0.2:  # a multi-turn history
            turns[:0] = [{"role": "user", "content": text(rng.randint(10, 60))},
                         {"role": "assistant", "content": text(rng.randint(10, 80))}]
        if rng.random() < 0.3:
            turns.insert(0, {"role": "system", "content": text(rng.randint(5, 30))})
        yield {"prompt": turns, "chosen": [{"role": "assistant", "content": chosen}],
               "rejected": [{"role": "assistant", "content": rejected}]}


def write_files(folder: Path, layout: str, sizes: list[int], seed: int) -> dict[int, Path]:
    """One JSONL per size, written in one pass (each a prefix of the next), rows streamed to disk."""
    paths = {n: folder / f"{layout}-{n}.jsonl" for n in sizes}
    with contextlib.ExitStack() as stack:
        files = {n: stack.enter_context(path.open("w", encoding="utf-8")) for n, path in paths.items()}
        for i, row in zip(range(max(sizes)), generate_rows(layout, seed)):
            line = json.dumps(row, ensure_ascii=False) + "\n"
            for n, file in files.items():
                if i < n:
                    file.write(line)
    return paths


def _clock() -> tuple[float, float]:
    """Wall seconds and CPU seconds of this process and its ended children (a ``map`` pool's workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time() + children.ru_utime + children.ru_stime


class CallProbe(threading.Thread):
    """From its creation to ``stop``: wall and CPU seconds, RSS, and the peak ``Pss``, ``Pss_Anon`` and ``Pss_File`` of
    this process and its children, sampled every 0.1 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.rss_before, self.before = rss_kb(), self.read()
        self.peak, self.done, self.clock = dict(self.before), threading.Event(), _clock()
        self.start()

    @staticmethod
    def read() -> dict[str, int]:
        pids = ["self"] + [c for t in Path("/proc/self/task").iterdir() for c in (t / "children").read_text().split()]
        total = dict.fromkeys(("Pss", "Pss_Anon", "Pss_File"), 0)
        for pid in pids:
            with contextlib.suppress(OSError):  # a child that just ended
                for key, kb in PSS.findall(Path(f"/proc/{pid}/smaps_rollup").read_text()):
                    total[key] += int(kb)
        return total

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = {key: max(value, self.peak[key]) for key, value in self.read().items()}

    def since(self) -> dict[str, float]:
        wall, cpu = _clock()
        return {"seconds": round(wall - self.clock[0], 3), "cpu_seconds": round(cpu - self.clock[1], 3)}

    def stop(self) -> dict:
        """The figures so far; peak RSS as this process's ``ru_maxrss`` and its largest child's, if any."""
        figures = {**self.since(), "rss_before_call_kb": self.rss_before, "peak_rss_kb": max_rss_kb(),
                   "children_peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}
        self.done.set()
        self.join()
        return {**figures, **{f"{k}_before_call_kb": v for k, v in self.before.items()},
                **{f"{k}_peak_kb": v for k, v in self.peak.items()}}


def trl_prepare(raw, tokenizer):
    """What TRL 1.9's ``ORPOTrainer.__init__`` runs on its train dataset (one process, no ``dataset_num_proc``)."""
    from trl.data_utils import maybe_apply_chat_template, maybe_extract_prompt
    from trl.experimental.orpo import ORPOTrainer  # its notice silenced by TRL_EXPERIMENTAL_SILENCE (`impls.OFFLINE`)

    trainer = object.__new__(ORPOTrainer)  # tokenize_row reads only these attributes
    trainer.processing_class, trainer.is_encoder_decoder, trainer.max_length = tokenizer, False, LIMITS["max_length"]
    rendered = raw.map(maybe_extract_prompt).map(maybe_apply_chat_template, fn_kwargs={"processing_class": tokenizer})
    return rendered.map(trainer.tokenize_row)


def run_job(job: dict) -> dict:
    """One path on one file in this fresh process: time, CPU time and memory of the call."""
    datasets.disable_progress_bars()
    if job["path"] != "axolotl":
        tokenizer = load_tokenizer()
        probe = CallProbe()
        raw = datasets.load_dataset("json", data_files=job["data"], split="train",
                                    cache_dir=str(Path(job["work_dir"]) / "hf"))
        loaded = probe.since()
        prepared = trl_prepare(raw, tokenizer) if job["path"] == "trl" else prepare_preference_dataset(
            raw, tokenizer, **LIMITS, source=Path(job["data"]).name)[0]
    else:
        import axolotl.common.datasets  # noqa: F401  what `axolotl preprocess` has imported before it calls us
        from axolotl.cli.config import load_cfg
        from axolotl.loaders import load_tokenizer as axolotl_tokenizer

        from merlina_orpo_plugin.integration.datasets import load_orpo_datasets

        cfg = load_cfg(job["config"], is_preprocess=True)
        tokenizer = axolotl_tokenizer(cfg)
        probe = CallProbe()
        (prepared, _, _), loaded = load_orpo_datasets(cfg, tokenizer), None
    return {**probe.stop(), "load_json": loaded, "rows": len(prepared)}


def run_one(tmp: Path, model_dir: Path, layout: str, path: str, data: Path) -> dict:
    """One run in a fresh process with its own caches (``axolotl``: the YAML `axolotl preprocess` would read)."""
    work = Path(tempfile.mkdtemp(prefix=f"{path}-{layout}-", dir=tmp))
    job = {"subcommand": "preprocess-scale", "path": path, "layout": layout, "data": str(data), "device": "cpu",
           "work_dir": str(work), "result_path": str(work / "result.json")}
    if path == "axolotl":
        dataset = {"path": str(data), "ds_type": "json", "type": LAYOUTS[layout], "split": "train"}
        job["config"] = str(write_config(job, plugins=[MERLINA_PLUGIN], rl="orpo_standalone", base_model=str(model_dir),
                                         sequence_len=MAX_LENGTH, micro_batch_size=1, learning_rate=1e-5, bf16=False,
                                         shuffle_merged_datasets=True, dataset_num_proc=1, datasets=[dataset]))
    load = os.getloadavg()[0]
    result = spawn(job, timeout=3600, HF_DATASETS_CACHE=str(work / "hf"), AXOLOTL_IS_PREPROCESS="1")
    if "error" in result:
        return {"error": f"{result['error']}: {result['log_tail'][-3000:]}"}
    shutil.rmtree(work, ignore_errors=True)  # the caches of a 200k run are gigabytes
    return {**result, "load_average_1m": {"start": round(load, 2), "end": round(os.getloadavg()[0], 2)}}


def summarise(runs: dict[int, dict]) -> dict:
    """pairs/s, CPU microseconds per pair, peak RSS per size; the largest size against the smallest."""
    sizes = sorted(n for n, r in runs.items() if "error" not in r)
    peak = {n: max(runs[n]["peak_rss_kb"], runs[n]["children_peak_rss_kb"]) for n in sizes}  # own or largest child's
    for n in sizes:
        r = runs[n]
        mib = {"peak_rss": peak[n], "growth": peak[n] - r["rss_before_call_kb"], "anon_peak": r["Pss_Anon_peak_kb"],
               "file_peak": r["Pss_File_peak_kb"]}
        r.update(pairs_per_s=round(n / r["seconds"], 1), cpu_us_per_pair=round(1e6 * r["cpu_seconds"] / n, 1),
                 **{f"{key}_mib": round(kb / 1024, 1) for key, kb in mib.items()})
    if len(sizes) < 2:
        return {}
    per_pair, wall = [runs[n]["cpu_us_per_pair"] for n in sizes], [runs[n]["seconds"] / n for n in sizes]
    first, last = runs[sizes[0]], runs[sizes[-1]]
    return {"peak_rss_ratio_largest_to_smallest": round(peak[sizes[-1]] / peak[sizes[0]], 3),
            "anon_peak_ratio_largest_to_smallest": round(last["Pss_Anon_peak_kb"] / first["Pss_Anon_peak_kb"], 3),
            "growth_largest_minus_smallest_mib": round(last["growth_mib"] - first["growth_mib"], 1),
            "cpu_per_pair_spread": round(max(per_pair) / min(per_pair) - 1, 3),
            "wall_per_pair_spread": round(max(wall) / min(wall) - 1, 3)}


def scale_markdown(results: dict) -> str:
    env, runs = results["environment"], results["runs"]
    checks = list(dict.fromkeys(key for group in runs.values() for key in group["check"]))
    lines = ["# Preprocessing at scale", "", f"- command: `{results['command']}`; date {env['date']}; git {env['git']}",
             f"- machine: {env['cpu']}, {env['cpu_count']} cores; {results['machine_load']}", ""]
    cells = [[*key.split("/"), f"{int(n):,}", *(["FAILED"] if "error" in r else [r.get(k, "-") for k in COLUMNS])]
             for key, group in runs.items() for n, r in group["sizes"].items()]
    lines += table(["layout", "path", "pairs", *COLUMNS.values()], cells)
    lines += [""] + table(["layout / path", *(k.replace("_", " ") for k in checks)],
                          [[k, *(g["check"].get(c) for c in checks)] for k, g in runs.items()])
    return "\n".join(lines + ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]) + "\n"


def main(args) -> int:
    """Generated pairs through the Python API, the Axolotl path and TRL's, each size and path in a fresh process."""
    sizes, groups = sorted(args.sizes), [(layout, path) for layout in args.layouts for path in args.paths]
    with tempfile.TemporaryDirectory(prefix="preprocess-scale-") as tmp:
        model_dir = Path(tmp, "model")
        if "axolotl" in args.paths:  # `load_cfg` reads a model's config; the SmolLM2 tokenizer is saved beside it
            build_model_dir(model_dir, "smoke", 49152, "cpu")
        files = {layout: write_files(Path(tmp), layout, sizes, args.seed) for layout in args.layouts}
        jobs = [(layout, path, n) for n in reversed(sizes) for layout, path in groups]  # the largest first
        with ThreadPoolExecutor(args.parallel) as pool:
            done = dict(zip(jobs, pool.map(lambda j: run_one(Path(tmp), model_dir, *j[:2], files[j[0]][j[2]]), jobs)))
    runs = {f"{layout}/{path}": {n: done[layout, path, n] for n in sizes} for layout, path in groups}
    checks = {key: summarise(group) for key, group in runs.items()}  # adds each run's per-pair figures
    for (layout, _, n), r in done.items():  # CPU time per pair and peak RSS against TRL's run on the same file
        trl = done.get((layout, "trl", n), {})
        if "cpu_us_per_pair" in r and "cpu_us_per_pair" in trl:
            r.update(cpu_speed_vs_trl=round(trl["cpu_us_per_pair"] / r["cpu_us_per_pair"], 2),
                     peak_rss_vs_trl=round(r["peak_rss_mib"] / trl["peak_rss_mib"], 2))
    loads = [r["load_average_1m"]["start"] for group in runs.values() for r in group.values() if "error" not in r]
    result = publish(args, "preprocess-scale", {
        "limits": LIMITS, "rows": {"short": SHORT, "long": LONG, "long_share": LONG_SHARE,
                                   "new_word_share": NEW_WORD_SHARE, "seed": args.seed},
        "runs": {key: {"sizes": group, "check": checks[key]} for key, group in runs.items()},
        "machine_load": f"1-minute load average {min(loads, default=0):.2f}-{max(loads, default=0):.2f} when the runs "
                        "started (other jobs shared the cores: compare CPU time, not wall time)",
        "notes": [
            "peak RSS: the fresh process's ru_maxrss (imports included) or its largest child's; growth in the call: "
            "that peak minus the RSS just before the call; CPU us/pair: the number to judge flatness by",
            "file (PSS): mostly page cache of the memory-mapped Arrow files, which the kernel reclaims; anon (PSS): "
            "the processes' own memory",
            f"--parallel {args.parallel}" + (": wall times include the runs' contention" if args.parallel > 1 else ""),
        ]}, markdown=scale_markdown, print_json=True)
    return 1 if any("error" in r for group in result["runs"].values() for r in group["sizes"].values()) else 0
