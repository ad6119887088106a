"""What a training run leaves in its ``output_dir``, read back for the tests."""

from __future__ import annotations

import json
from pathlib import Path


def generation_rows(output_dir, missing_ok: bool = False) -> list[dict]:
    """The rows of the eval-generations JSONL (`generation.JSONL_NAME`) in ``output_dir``, in the order written.

    Split at "\\n" only: rows are written with ``ensure_ascii=False``, so a sample may hold a U+2028
    that `str.splitlines` would split at. ``missing_ok``: no JSONL gives no rows instead of an error.
    """
    from merlina_orpo_plugin.generation import JSONL_NAME

    path = Path(output_dir) / JSONL_NAME
    if missing_ok and not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
