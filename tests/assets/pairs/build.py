"""Writes the preference-data files in tests/assets/pairs/ from the hand-written texts in src/.

Run ``python tests/assets/pairs/build.py`` after editing src/; ``--check`` exits 1 when a committed
file differs from what this script writes. Deterministic, standard library only.

Source format (UTF-8 text). A line ``§§ key=value ...`` starts a record; a line ``§ tag [option]``
starts one of its texts, which runs to the next header line. Lines starting ``§#`` are comments.
Each text loses its leading and trailing blank lines and every line its trailing spaces and tabs,
so invisible characters are written as markers: ⟦SP⟧ space, ⟦TAB⟧ tab, ⟦NL⟧ newline, ⟦CR⟧
carriage return, ⟦NBSP⟧, ⟦ZWJ⟧, ⟦ZWSP⟧, ⟦SHY⟧ (soft hyphen), ⟦ACUTE⟧ (combining U+0301) and
⟦U+hhhh⟧ for any code point. The option ``crlf`` turns the text's line breaks into CRLF. A record
attribute ``sys=NAME`` takes the system text named NAME from src/systems.txt.

Source files map to outputs by name: src/<output stem>*.txt, read in sorted order.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
MARKERS = {"SP": " ", "TAB": "\t", "NL": "\n", "CR": "\r", "NBSP": "\u00a0", "ZWJ": "\u200d",
           "ZWSP": "\u200b", "SHY": "\u00ad", "ACUTE": "\u0301"}
_MARKER = re.compile(r"⟦(U\+[0-9A-F]{4,6}|[A-Z]+)⟧")


def _expand(match: re.Match) -> str:
    name = match.group(1)
    if name.startswith("U+"):
        return chr(int(name[2:], 16))
    if name not in MARKERS:
        raise ValueError(f"unknown marker ⟦{name}⟧: use one of {sorted(MARKERS)} or ⟦U+hhhh⟧")
    return MARKERS[name]


def _text(lines: list[str], options: list[str], where: str) -> str:
    lines = [line.rstrip(" \t") for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    text = "\n".join(lines)
    if "crlf" in options:
        text = text.replace("\n", "\r\n")
    if "⟦" in _MARKER.sub("", text):
        raise ValueError(f"{where}: a '⟦' that is not a marker")
    return _MARKER.sub(_expand, text)


def parse(path: Path) -> list[dict]:
    """Records of one source file: {"attrs": {...}, "texts": [(tag, text), ...], "where": ...}."""
    records: list[dict] = []
    tag = None
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        where = f"{path.name}:{number}"
        if line.startswith("§#"):
            continue
        if line.startswith("§§"):
            attrs = dict(item.split("=", 1) for item in line[2:].split())
            records.append({"attrs": attrs, "texts": [], "where": where})
            tag = None
        elif line.startswith("§"):
            if not records:
                raise ValueError(f"{where}: a text before the first record")
            parts = line[1:].split()
            if not parts:
                raise ValueError(f"{where}: '§' without a tag")
            records[-1]["texts"].append([parts[0], parts[1:], [], where])
            tag = parts[0]
        elif tag is not None:
            records[-1]["texts"][-1][2].append(line)
        elif line.strip():
            raise ValueError(f"{where}: text outside a tagged block")
    for record in records:
        record["texts"] = [(t, _text(body, opts, w)) for t, opts, body, w in record["texts"]]
    return records


def records(stem: str) -> list[dict]:
    found = [r for path in sorted(SRC.glob(f"{stem}*.txt")) for r in parse(path)]
    systems = {r["attrs"]["name"]: r["texts"][0][1] for r in parse(SRC / "systems.txt")}
    for record in found:
        if "sys" in record["attrs"]:
            record["texts"].insert(0, ("system", systems[record["attrs"]["sys"]]))
    return found


def _check_tags(record: dict, allowed: set[str]) -> list[tuple[str, str]]:
    for tag, _ in record["texts"]:
        if tag not in allowed:
            raise ValueError(f"{record['where']}: tag '{tag}' is not one of {sorted(allowed)}")
    return record["texts"]


def _split(record: dict, allowed: set[str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """History turns (in order) and the final texts (chosen, rejected, ...) of a record."""
    texts = _check_tags(record, allowed)
    history = [(t, v) for t, v in texts if t in {"system", "human", "gpt", "user", "assistant"}]
    finals = {t: v for t, v in texts if t not in {"system", "human", "gpt", "user", "assistant"}}
    return history, finals


def sharegpt(stem: str) -> list[dict]:
    rows = []
    for record in records(stem):
        history, finals = _split(record, {"system", "human", "gpt", "chosen", "rejected"})
        rows.append({
            "conversations": [{"from": t, "value": v} for t, v in history],
            "chosen": {"from": "gpt", "value": finals["chosen"]},
            "rejected": {"from": "gpt", "value": finals["rejected"]},
        })
    return rows


def _msg(role: str, content: str) -> dict:
    return {"content": content, "role": role}


def ultrafeedback() -> list[dict]:
    rows = []
    for record in records("ultrafeedback_h4"):
        _, t = _split(record, {"prompt", "chosen", "rejected"})
        a = record["attrs"]
        chosen = [_msg("user", t["prompt"]), _msg("assistant", t["chosen"])]
        rows.append({
            "prompt": t["prompt"],
            "prompt_id": hashlib.sha256(t["prompt"].encode("utf-8")).hexdigest(),
            "chosen": chosen,
            "rejected": [_msg("user", t["prompt"]), _msg("assistant", t["rejected"])],
            "messages": chosen,
            "score_chosen": float(a["score_chosen"]),
            "score_rejected": float(a["score_rejected"]),
        })
    return rows


def hh_rlhf() -> list[dict]:
    """Transcripts "\\n\\nHuman: ...\\n\\nAssistant: ..."; attrs: subset, empty=bare|space (how an
    empty final turn is spelled), lead=none (no "\\n\\n" before the first turn), same=1."""
    rows = []
    for record in records("hh_rlhf"):
        history, finals = _split(record, {"human", "assistant", "chosen", "rejected"})
        a = record["attrs"]
        speaker = {"human": "Human", "assistant": "Assistant"}
        shared = "".join(f"\n\n{speaker[t]}: {v}" for t, v in history)
        if a.get("lead") == "none":
            shared = shared[2:]

        def final(text: str) -> str:
            if text:
                return f"{shared}\n\nAssistant: {text}"
            return shared + {"bare": "\n\nAssistant:", "space": "\n\nAssistant: "}[a["empty"]]

        chosen = final(finals["chosen"])
        rejected = chosen if a.get("same") == "1" else final(finals["rejected"])
        rows.append({"chosen": chosen, "rejected": rejected, "subset": a["subset"]})
    return rows


def orca() -> list[dict]:
    rows = []
    for record in records("orca_dpo_pairs"):
        t = dict(_check_tags(record, {"system", "question", "chosen", "rejected"}))
        rows.append({k: t.get(k, "") for k in ("system", "question", "chosen", "rejected")})
    return rows


def _messages(history: list[tuple[str, str]]) -> list[dict]:
    return [_msg(t, v) for t, v in history]


def argilla_mix() -> list[dict]:
    rows = []
    for record in records("argilla_dpo_mix"):
        history, finals = _split(record, {"system", "user", "assistant", "chosen", "rejected"})
        a = record["attrs"]
        rows.append({
            "dataset": a["dataset"],
            "chosen": _messages(history) + [_msg("assistant", finals["chosen"])],
            "rejected": _messages(history) + [_msg("assistant", finals["rejected"])],
            "chosen_rating": float(a["chosen_rating"]),
            "rejected_rating": float(a["rejected_rating"]),
        })
    return rows


def _zephyr_prompt(history: list[tuple[str, str]]) -> str:
    """The rendered prompt a generator saw (Zephyr/Notus markup, as distilabel wrote it)."""
    tags = {"user": "<|user|>", "assistant": "<|assistant|>"}
    return "<|system|>\n</s>\n" + "".join(f"{tags[t]}\n{v}</s>\n" for t, v in history) + "<|assistant|>\n"


def capybara() -> list[dict]:
    """argilla/distilabel-capybara-dpo-7k-binarized: `original` names the block (chosen, rejected or
    other) holding Capybara's original GPT-4 answer; the others are the new generations."""
    rows = []
    for record in records("capybara_argilla"):
        history, finals = _split(record, {"user", "assistant", "chosen", "rejected", "other"})
        a = record["attrs"]
        original = finals[a["original"]]
        generated = [finals[k] for k in ("chosen", "rejected", "other") if k in finals and k != a["original"]]
        users = [v for t, v in history if t == "user"]
        outputs = [v for t, v in history if t == "assistant"] + [original]
        conversation = [{"input": u, "output": o} for u, o in zip(users, outputs)]
        rows.append({
            "source": a["source"],
            "conversation": conversation,
            "original_response": original,
            "generation_prompt": [_zephyr_prompt(history)] * len(generated),
            "raw_generation_responses": generated,
            "new_generations": generated,
            "prompt": history[0][1],
            "chosen": _messages(history) + [_msg("assistant", finals["chosen"])],
            "rejected": _messages(history) + [_msg("assistant", finals["rejected"])],
            "rating_chosen": int(a["rating_chosen"]),
            "rating_rejected": int(a["rating_rejected"]),
            "chosen_model": a["chosen_model"],
            "rejected_model": a["rejected_model"],
        })
    return rows


def stack_exchange() -> list[dict]:
    rows = []
    for record in records("stack_exchange"):
        _, t = _split(record, {"question", "response_j", "response_k"})
        rows.append({k: t[k] for k in ("question", "response_j", "response_k")})
    return rows


def _json(rows: list[dict]) -> str:
    return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def build() -> dict[str, str]:
    """File name -> the exact text this script writes."""
    return {
        "sharegpt_en.json": _json(sharegpt("sharegpt_en")),
        "sharegpt_zh.json": _json(sharegpt("sharegpt_zh")),
        "ultrafeedback_h4.jsonl": _jsonl(ultrafeedback()),
        "hh_rlhf.jsonl": _jsonl(hh_rlhf()),
        "orca_dpo_pairs.jsonl": _jsonl(orca()),
        "argilla_dpo_mix.jsonl": _jsonl(argilla_mix()),
        "capybara_argilla.jsonl": _jsonl(capybara()),
        "stack_exchange.json": _json(stack_exchange()),
    }


def main(argv: list[str]) -> int:
    stale = []
    for name, text in build().items():
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("differ from build.py's output (run `python tests/assets/pairs/build.py`): " + ", ".join(stale))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
