"""Preprocessing at scale: generated pairs (10k, 50k, 200k by default) tokenised through
``prepare_preference_dataset`` (``api``: the JSONL loaded with ``datasets.load_dataset("json")``, then
the call) and through the Axolotl path (``axolotl``: ``load_orpo_datasets`` with the cfg of Axolotl's
``load_cfg``, as ``axolotl preprocess`` calls it: load, strategy, check, tokenise, shuffle, save), each
size and path in a fresh process so ``ru_maxrss`` is that run's peak RSS. Rows are generated, in both
layouts the plugin reads (``text``: prompt/chosen/rejected strings, `type: prompt_pairs`; ``messages``:
conversational, `type: chat_template`), short and long, from a word list with the frequencies of the
repository's own pair texts plus new words (numbers, names) so the BPE caches meet a growing vocabulary.
Prints JSON; README.md here ("Preprocessing at scale") describes every field."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .preprocess import DATASETS
from .workload import LIMITS, MAX_LENGTH, REPO, load_tokenizer

LAYOUTS = {"text": "prompt_pairs", "messages": "chat_template"}  # layout -> the Axolotl `type:` reading it
PATHS = ("api", "axolotl")
#: per row: short (80%) or long; words in the prompt, words in each answer (uniform in each range)
SHORT, LONG, LONG_SHARE = ((5, 25), (5, 40)), ((60, 250), (30, 150)), 0.2
NEW_WORD_SHARE = 0.02  # words that are no word of the list: numbers, identifiers, names (Heaps' law)


def add_arguments(p) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    p.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallel", type=int, default=1, help="runs side by side (largest sizes first): CPU time "
                   "and RSS stay per process, wall time then includes the contention")
    p.add_argument("--out", type=Path, help="also write <machine>-preprocess-scale.{json,md} here")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # one run, in its own process


class Words:
    """Text drawn word by word with the frequencies of the repository's pair texts (each word with its
    leading white space, so punctuation and line breaks stay natural); ``NEW_WORD_SHARE`` of the words
    are new, so the vocabulary keeps growing with the dataset as real text's does."""

    def __init__(self, seed: int):
        import numpy as np

        counts = Counter()
        for path in DATASETS.values():
            for row in json.loads(path.read_text(encoding="utf-8")):
                for turn in [*row["conversations"], row["chosen"], row["rejected"]]:
                    counts.update(re.findall(r"\s*\S+", turn["value"]))
        self.words = np.array(list(counts), dtype=object)
        self.cumulative = np.cumsum(np.fromiter(counts.values(), dtype=np.float64))
        self.rng, self.np, self.buffer, self.at = np.random.default_rng(seed), np, [], 0

    def _refill(self) -> None:
        draws = self.rng.random(1 << 20)
        words = self.words[self.np.searchsorted(self.cumulative, draws * self.cumulative[-1], side="right")]
        for i in self.np.flatnonzero(self.rng.random(len(words)) < NEW_WORD_SHARE):
            words[i] = self._new_word(int(self.rng.integers(1 << 30)))
        self.buffer, self.at = words.tolist(), 0

    @staticmethod
    def _new_word(n: int) -> str:
        """A number, an identifier or a name, from one random integer."""
        kind = n % 3
        if kind == 0:
            return f" {n % 10 ** (1 + n % 6)}"
        return f" id_{n:x}" if kind == 1 else " " + format(n, "o").translate(_LETTERS).title()

    def text(self, count: int) -> str:
        if self.at + count > len(self.buffer):
            self._refill()
        words, self.at = self.buffer[self.at : self.at + count], self.at + count
        return "".join(words).strip()


_LETTERS = str.maketrans("01234567", "aeioklmr")  # octal digits -> letters: pronounceable new names


def generate_rows(layout: str, seed: int):
    """Endless rows of ``layout``, the same for a seed whatever the size (a smaller file is a prefix)."""
    words, rng = Words(seed), random.Random(seed)
    while True:
        prompt_words, answer_words = LONG if rng.random() < LONG_SHARE else SHORT
        prompt, chosen, rejected = (words.text(rng.randint(*r)) for r in (prompt_words, answer_words, answer_words))
        if layout == "text":  # the prompt ends with its separator (`prompt_pairs`' contract)
            yield {"prompt": prompt + "\n", "chosen": chosen, "rejected": rejected}
            continue
        turns = [{"role": "user", "content": prompt}]
        if rng.random() < 0.2:  # a multi-turn history
            turns[:0] = [{"role": "user", "content": words.text(rng.randint(10, 60))},
                         {"role": "assistant", "content": words.text(rng.randint(10, 80))}]
        if rng.random() < 0.3:
            turns.insert(0, {"role": "system", "content": words.text(rng.randint(5, 30))})
        yield {"prompt": turns, "chosen": [{"role": "assistant", "content": chosen}],
               "rejected": [{"role": "assistant", "content": rejected}]}


def write_files(folder: Path, layout: str, sizes: list[int], seed: int) -> dict[int, Path]:
    """One JSONL per size, written in one pass (each a prefix of the next), rows streamed to disk."""
    paths = {n: folder / f"{layout}-{n}.jsonl" for n in sizes}
    files = {n: path.open("w", encoding="utf-8") for n, path in paths.items()}
    for i, row in zip(range(max(sizes)), generate_rows(layout, seed)):
        line = json.dumps(row, ensure_ascii=False) + "\n"
        for n, file in files.items():
            if i < n:
                file.write(line)
    for file in files.values():
        file.close()
    return paths


class RssKinds(threading.Thread):
    """Peak ``Pss_Anon`` (the heap: rows held in Python or Arrow buffers) and ``Pss_File`` (file pages mapped
    in: memory-mapped Arrow files, libraries; page cache the kernel can drop), each summed over this process
    and its children (a ``map`` with ``num_proc`` works in a forked one), from /proc every 0.1 s. Proportional
    (PSS): a page shared with a child, or with another process mapping the same library, is divided among
    them, so the sum is this process tree's own memory; ``ru_maxrss`` counts anon and file pages alike."""

    KEYS = ("Pss", "Pss_Anon", "Pss_File")

    def __init__(self):
        super().__init__(daemon=True)
        self.done, self.before = threading.Event(), self.read()
        self.peak = dict(self.before)

    @classmethod
    def read(cls) -> dict[str, int]:
        pids = ["self"] + [c for t in Path("/proc/self/task").iterdir() for c in (t / "children").read_text().split()]
        total = dict.fromkeys(cls.KEYS, 0)
        for pid in pids:
            try:
                lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            except OSError:  # a child that just ended
                continue
            for key, value in (line.split(":", 1) for line in lines if line.split(":", 1)[0] in total):
                total[key] += int(value.split()[0])
        return total

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = {key: max(value, self.peak[key]) for key, value in self.read().items()}

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.join()
        return {**{f"{k}_before_call_kb": v for k, v in self.before.items()},
                **{f"{k}_peak_kb": v for k, v in self.peak.items()}}


def _clock() -> tuple[float, float]:
    """Wall seconds and CPU seconds of this process and its ended children (a ``map`` pool's workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time() + children.ru_utime + children.ru_stime


def _since(start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = _clock()
    return {"seconds": round(wall - start[0], 3), "cpu_seconds": round(cpu - start[1], 3)}


def run_child(job: dict) -> dict:
    """One path on one file, in this (fresh) process: time and CPU time of the call, RSS before it and the
    process's peak (``ru_maxrss``, over its whole life; imports and tokenizer load happen before the call)."""
    import datasets

    from .measure import max_rss_kb, rss_kb

    datasets.disable_progress_bars()
    work = Path(job["work"])
    if job["path"] == "api":
        from merlina_orpo_plugin.data import prepare_preference_dataset

        tokenizer = load_tokenizer()
        before, kinds, start = rss_kb(), RssKinds(), _clock()
        kinds.start()
        raw = datasets.load_dataset("json", data_files=job["data"], split="train", cache_dir=str(work / "hf"))
        loaded = _since(start)
        prepared, _ = prepare_preference_dataset(raw, tokenizer, **LIMITS, source=Path(job["data"]).name)
        rows = len(prepared)
    else:
        from axolotl.cli.config import load_cfg
        from axolotl.loaders import load_tokenizer as axolotl_tokenizer

        from merlina_orpo_plugin.integration.datasets import load_orpo_datasets

        cfg = load_cfg(job["config"], is_preprocess=True)
        tokenizer = axolotl_tokenizer(cfg)
        before, kinds, start = rss_kb(), RssKinds(), _clock()
        kinds.start()
        train, _, _ = load_orpo_datasets(cfg, tokenizer)
        rows, loaded = len(train), None
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child's, if any
    return {**_since(start), "load_json": loaded, "rows": rows, "rss_before_call_kb": before,
            "peak_rss_kb": max_rss_kb(), "children_peak_rss_kb": children, **kinds.stop()}


def axolotl_config(work: Path, data: Path, layout: str, model_dir: Path) -> Path:
    """The YAML `axolotl preprocess` would read: our plugin, one JSONL entry, the package's limits,
    one tokenising process (``dataset_num_proc: 1``: the peak RSS is this process's)."""
    import yaml

    from .impls import FIXED, MERLINA_PLUGIN

    cfg = dict(FIXED, plugins=[MERLINA_PLUGIN], rl="orpo_standalone", base_model=str(model_dir),
               sequence_len=MAX_LENGTH, micro_batch_size=1, learning_rate=1e-5, bf16=False,
               shuffle_merged_datasets=True, dataset_num_proc=1, output_dir=str(work / "out"),
               dataset_prepared_path=str(work / "prepared"),
               datasets=[{"path": str(data), "ds_type": "json", "type": LAYOUTS[layout], "split": "train"}])
    path = work / "config.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


#: A child that runs longer is ended and reported as an error (a 200k run takes minutes, not an hour).
CHILD_TIMEOUT_S = 3600


def run_one(tmp: Path, path: str, layout: str, data: Path, model_dir: Path) -> dict:
    """``python -m benchmarks preprocess-scale --child JOB.json`` in a fresh process, its own caches."""
    from .impls import child_env

    work = Path(tempfile.mkdtemp(prefix=f"{path}-{layout}-", dir=tmp))
    job = {"path": path, "layout": layout, "data": str(data), "work": str(work)}
    if path == "axolotl":
        job["config"] = str(axolotl_config(work, data, layout, model_dir))
    (work / "job.json").write_text(json.dumps(job))
    env = dict(child_env(None, "cpu"), HF_DATASETS_CACHE=str(work / "hf"), AXOLOTL_IS_PREPROCESS="1")
    load = os.getloadavg()[0]
    with (work / "log.txt").open("w") as log:
        try:
            code = subprocess.run([sys.executable, "-m", "benchmarks", "preprocess-scale", "--child",
                                   str(work / "job.json")], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=CHILD_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            code = f"timeout after {CHILD_TIMEOUT_S} s"
    if code != 0:
        return {"error": f"exit {code}: " + (work / "log.txt").read_text()[-3000:]}
    result = json.loads((work / "result.json").read_text())
    shutil.rmtree(work, ignore_errors=True)  # the caches of a 200k run are gigabytes
    return {**result, "load_average_1m": {"start": round(load, 2), "end": round(os.getloadavg()[0], 2)}}


def _peak_kb(run: dict) -> int:
    """The run's peak RSS: its own ``ru_maxrss``, or its largest child's (the ``map`` worker) if larger."""
    return max(run["peak_rss_kb"], run["children_peak_rss_kb"])


def summarise(runs: dict[int, dict]) -> dict:
    """pairs/s, CPU microseconds per pair, peak RSS per size; the largest size against the smallest."""
    sizes = sorted(n for n, r in runs.items() if "error" not in r)
    for n in sizes:
        r = runs[n]
        r.update(pairs_per_s=round(n / r["seconds"], 1), cpu_us_per_pair=round(1e6 * r["cpu_seconds"] / n, 1),
                 peak_rss_mib=round(_peak_kb(r) / 1024, 1),
                 growth_mib=round((_peak_kb(r) - r["rss_before_call_kb"]) / 1024, 1),
                 anon_peak_mib=round(r["Pss_Anon_peak_kb"] / 1024, 1), file_peak_mib=round(r["Pss_File_peak_kb"] / 1024, 1))
    if len(sizes) < 2:
        return {}
    per_pair = [runs[n]["cpu_us_per_pair"] for n in sizes]
    first, last = runs[sizes[0]], runs[sizes[-1]]
    return {"peak_rss_ratio_largest_to_smallest": round(_peak_kb(last) / _peak_kb(first), 3),
            "anon_peak_ratio_largest_to_smallest": round(last["Pss_Anon_peak_kb"] / first["Pss_Anon_peak_kb"], 3),
            "growth_largest_minus_smallest_mib": round(last["growth_mib"] - first["growth_mib"], 1),
            "cpu_per_pair_spread": round(max(per_pair) / min(per_pair) - 1, 3),
            "wall_per_pair_spread": round(max(runs[n]["seconds"] / n for n in sizes)
                                          / min(runs[n]["seconds"] / n for n in sizes) - 1, 3)}


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = ["# Preprocessing at scale", "", f"- command: `{results['command']}`; date {env['date']}; git {env['git']}",
             f"- machine: {env['cpu']}, {env['cpu_count']} cores; {results['machine_load']}", "",
             "| layout | path | pairs | seconds | pairs/s | CPU us/pair | peak RSS MiB | growth in the call MiB "
             "| peak anon MiB (PSS) | peak file MiB (PSS) |", "|---" * 10 + "|"]
    for key, group in results["runs"].items():
        for n, r in group["sizes"].items():
            cells = ([r[k] for k in ("seconds", "pairs_per_s", "cpu_us_per_pair", "peak_rss_mib", "growth_mib",
                                     "anon_peak_mib", "file_peak_mib")] if "error" not in r else ["FAILED"])
            lines.append(f"| {' | '.join(key.split('/'))} | {int(n):,} | " + " | ".join(map(str, cells)) + " |")
    keys = ("peak_rss_ratio_largest_to_smallest", "anon_peak_ratio_largest_to_smallest",
            "growth_largest_minus_smallest_mib", "cpu_per_pair_spread", "wall_per_pair_spread")
    lines += ["", "| layout / path | " + " | ".join(k.replace("_", " ") for k in keys) + " |", "|---" * 6 + "|"]
    lines += [f"| {k} | " + " | ".join(str(g["check"].get(c)) for c in keys) + " |" for k, g in results["runs"].items()]
    return "\n".join(lines + ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]) + "\n"


def main(args) -> int:
    if args.child:
        job = json.loads(args.child.read_text())
        (Path(job["work"]) / "result.json").write_text(json.dumps(run_child(job)))
        return 0
    from .report import command, environment, machine_slug, scrub, write_result
    from .workload import build_model_dir

    results = {"command": command("preprocess-scale", args.argv), "environment": environment("cpu"),
               "limits": LIMITS, "rows": {"short": SHORT, "long": LONG, "long_share": LONG_SHARE,
                                           "new_word_share": NEW_WORD_SHARE, "seed": args.seed}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="preprocess-scale-") as tmp:
        model_dir = Path(tmp, "model")
        if "axolotl" in args.paths:  # `load_cfg` reads a model's config; the SmolLM2 tokenizer is saved beside it
            build_model_dir(model_dir, "smoke", 49152, "cpu")
        files = {layout: write_files(Path(tmp), layout, sorted(args.sizes), args.seed) for layout in args.layouts}
        jobs = [(layout, path, n) for n in sorted(args.sizes, reverse=True) for layout in args.layouts for path in args.paths]
        with ThreadPoolExecutor(args.parallel) as pool:
            done = dict(zip(jobs, pool.map(lambda j: run_one(Path(tmp), j[1], j[0], files[j[0]][j[2]], model_dir), jobs)))
    for layout in args.layouts:
        for path in args.paths:
            runs = {n: done[layout, path, n] for n in sorted(args.sizes)}
            results["runs"][f"{layout}/{path}"] = {"sizes": runs, "check": summarise(runs)}
    loads = [r["load_average_1m"]["start"] for g in results["runs"].values() for r in g["sizes"].values() if "error" not in r]
    results["machine_load"] = (f"1-minute load average {min(loads, default=0):.2f}-{max(loads, default=0):.2f} when the "
                               f"runs started (other jobs shared the cores: compare CPU time, not wall time)")
    results["notes"] = [
        "each size and path ran in a fresh process; peak RSS = that process's ru_maxrss (imports and tokenizer "
        "included) or its largest child's if larger; growth in the call = that peak minus the RSS just before the "
        "timed call; CPU time counts any child process too",
        "api: datasets.load_dataset('json') of the file, then prepare_preference_dataset (layout detected); "
        "axolotl: load_orpo_datasets(load_cfg(config.yml)) with dataset_num_proc 1 and shuffle on, as "
        "`axolotl preprocess` runs it (reads the file, strategy, check, tokenise, shuffle, save_to_disk, reload)",
        "CPU us/pair = process CPU seconds of the call / pairs: the number to judge flatness by on a shared machine",
        "anon / file (PSS): Pss_Anon / Pss_File peaks sampled every 0.1 s during the call, summed over the process "
        "and its children; file holds the memory-mapped Arrow files' pages read so far (page cache the kernel "
        "reclaims under pressure) and the libraries' share, anon the processes' own memory",
        f"--parallel {args.parallel}: that many runs side by side" + (" (largest sizes first), so wall times include "
                                                                      "their contention" if args.parallel > 1 else ""),
    ]
    results = scrub(results)
    print(json.dumps(results, indent=1))
    if args.out:
        write_result(args.out / f"{machine_slug('cpu')}-preprocess-scale", results, markdown(results))
    failed = [k for k, g in results["runs"].items() for r in g["sizes"].values() if "error" in r]
    return 1 if failed else 0
