"""`axolotl orpo-eval CONFIG.yml`: did the preference training work? Base model vs trained adapter, one run.

Scores held-out pairs with the recipe's base model and with what training left in ``output_dir`` (a
LoRA adapter, or a full model), or ``--adapter DIR``: preference accuracy (share of pairs whose
chosen answer has the higher mean token log-prob), mean margin and the mean chosen / rejected
log-probs, per dataset, as a table and with ``--json``. The pairs are the recipe's evaluation data
(each `test_datasets:` entry, else the `val_set_size` split exactly as training split it), or
``--data FILE`` in any dataset type. Rows are tokenised by the training pipeline itself, with the
config's `DataOptions` resolved once (the model's config read once).

Registered under Axolotl's `axolotl.cli_commands` entry-point group, like `orpo-preview`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .cli import _check_config_file, _load_orpo_config, _quiet_logs

if TYPE_CHECKING:
    from .data_options import DataOptions

COLUMNS = ("pairs", "accuracy", "mean_margin", "mean_chosen_logp", "mean_rejected_logp")


@click.command("orpo-eval")
@click.argument("config", metavar="CONFIG.yml")
@click.option("--data", "data_files", multiple=True, type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Score these pairs (JSON / JSON lines) instead of the recipe's evaluation data; repeatable.")
@click.option("--type", "data_type", default=None, metavar="TYPE",
              help="Dataset type of --data (default: the type of the recipe's first `datasets:` entry).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), default=None, metavar="DIR",
              help="Trained adapter or model folder (default: the recipe's output_dir).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), metavar="N",
              help="Pairs per forward.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, metavar="OUT",
              help="Also write the results here as JSON.")
def orpo_eval(config: str, data_files: tuple[str, ...], data_type: str | None, adapter: str | None,
              batch_size: int, json_path: str | None) -> None:
    """Preference accuracy of the base model and of the trained adapter on held-out pairs of CONFIG.yml."""
    _check_config_file(config)
    _quiet_logs()
    cfg = _load_orpo_config(config)
    from axolotl.loaders import load_tokenizer

    from ..batch.collator import pad_id_of
    from ..preference_eval import score_tokenised
    from .data_options import DataOptions

    tokenizer = load_tokenizer(cfg)
    options = DataOptions.from_cfg(cfg)
    eval_sets = _eval_sets(options, tokenizer, data_files, data_type)
    trained_dir = Path(adapter or cfg.get("output_dir") or "")
    base, trained = _models(cfg, trained_dir, encoder_decoder=options.encoder_decoder)
    pad = pad_id_of(tokenizer)
    results = [{"dataset": label, "runs": {}} for label, _ in eval_sets]
    for name, model in (("base", base), ("trained", trained)):  # each model loaded once, for every eval set
        with model() as loaded:
            for result, (_, rows) in zip(results, eval_sets):
                result["runs"][name] = score_tokenised(loaded, rows, pad, batch_size=batch_size).summary()
    click.echo(_table(results, trained_dir))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        document = {"config": config, "base_model": cfg.get("base_model"), "trained": str(trained_dir), "results": results}
        Path(json_path).write_text(json.dumps(document, indent=2) + "\n")


def _eval_sets(options: DataOptions, tokenizer, data_files, data_type) -> list[tuple[str, list[dict]]]:
    from .datasets import load_orpo_datasets, prepare_entry

    if data_files:
        kind = data_type or (options.train_entries or ({},))[0].get("type")
        entries = [{"path": path, "ds_type": "json", "type": kind} for path in data_files]
    else:
        entries = list(options.test_entries)
    if entries:
        return [(entry["path"], prepare_entry(entry, options, tokenizer).tokenised.to_list()) for entry in entries]
    _, evaluation, _ = load_orpo_datasets(options, tokenizer)
    if evaluation is None:
        raise click.ClickException("the recipe has no evaluation data (`val_set_size` or `test_datasets`): "
                                   "pass --data FILE")
    return [(f"val_set_size {options.val_set_size} split", evaluation.to_list())]


def _models(cfg, trained_dir: Path, *, encoder_decoder: bool):
    """Two context managers giving the base model and the trained one; an adapter shares the base's weights."""
    from contextlib import contextmanager

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and cfg.get("bf16") in (True, "auto") else torch.float32
    device = "cuda" if cuda else "cpu"
    if (trained_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(auto.from_pretrained(cfg["base_model"], dtype=dtype), trained_dir).to(device)

        @contextmanager
        def base():
            with model.disable_adapter():
                yield model

        @contextmanager
        def trained():
            yield model

        return base, trained
    if not (trained_dir / "config.json").is_file():
        raise click.ClickException(f"{trained_dir} holds no adapter (adapter_config.json) and no model (config.json): "
                                   "train first, or pass --adapter DIR")

    def loader(name):
        @contextmanager
        def load():
            yield auto.from_pretrained(name, dtype=dtype).to(device)

        return load

    return loader(cfg["base_model"]), loader(str(trained_dir))


def _table(results: list[dict], trained_dir: Path) -> str:
    lines = [f"preference accuracy (chosen mean log-prob > rejected), base model vs {trained_dir}:",
             f"  {'dataset':<40} {'model':<8} " + " ".join(f"{c:>18}" for c in COLUMNS)]
    for result in results:
        for name, summary in result["runs"].items():
            cells = " ".join(f"{summary[c]:>18.4f}" if isinstance(summary[c], float) else f"{summary[c]:>18}"
                             for c in COLUMNS)
            lines.append(f"  {result['dataset'][-40:]:<40} {name:<8} {cells}")
    return "\n".join(lines)
