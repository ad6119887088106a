"""The plugin end to end through the real `axolotl` CLI: preprocess, train, merge-lora, resume, QLoRA.

Each test runs real Axolotl commands in a subprocess on a tiny local Llama with the real SmolLM2
tokenizer and real preference samples from ../shared/data, offline on CPU, and checks what the
commands left on disk (prepared data, adapters, checkpoints, W&B and TensorBoard logs) and printed.
"""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("axolotl", reason="end-to-end tests drive the axolotl CLI (installed by make test)")

from e2e_helpers import llamafactory_file, run_cli, tiny_model_dir, write_config  # noqa: E402
from conftest import shared_path  # noqa: E402
import pairs_files  # noqa: E402

pytestmark = pytest.mark.slow

def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _stack_exchange_rows():
    return json.loads(shared_path("stack-exchange-paired-sample", "stack_exchange_paired_tiny.json").read_text())


def _every_type(tmp_path) -> list[dict]:
    """One dataset entry per built-in type, each on real or realistic rows."""
    h4 = str(shared_path("ultrafeedback-h4-sample", "dummy_dpo.jsonl"))
    stack = _stack_exchange_rows()
    intel = _jsonl(tmp_path / "intel.jsonl", [
        {"system": "You are a careful programming assistant.", "question": r["question"],
         "chosen": r["response_j"], "rejected": r["response_k"]} for r in stack[:6]
    ])
    return [
        {"path": h4, "ds_type": "json", "type": "chat_template.argilla"},
        {"path": h4, "ds_type": "json", "type": "chat_template"},
        {"path": str(llamafactory_file()), "ds_type": "json", "type": "sharegpt"},
        {"path": str(intel), "ds_type": "json", "type": "chat_template.intel"},
        # HH-RLHF's four subsets, with empty final Assistant turns and identical pairs
        {"path": str(pairs_files.path("hh_rlhf.jsonl")), "ds_type": "json", "type": "hh_rlhf"},
        {"path": str(shared_path("stack-exchange-paired-sample", "stack_exchange_paired_tiny.json")),
         "ds_type": "json", "type": "prompt_pairs", "field_prompt": "question",
         "field_chosen": "response_j", "field_rejected": "response_k"},
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def _summary(prepared_dir) -> dict:
    (path,) = prepared_dir.glob("merlina-orpo-*/merlina_orpo_complete.json")
    return json.loads(path.read_text())


def test_every_type_preprocess_then_train_with_cache_wandb_tensorboard_then_merge(tmp_path, model_dir):
    """preprocess tokenises all six types once (HH-RLHF rows with empty final turns included, counted);
    train reuses that cache, logs ORPO metrics to W&B (offline) and TensorBoard, evaluates on
    val_set_size; merge-lora gives a loadable model."""
    entries = _every_type(tmp_path)
    config = write_config(
        tmp_path, model_dir, entries, val_set_size=0.05, max_steps=2, eval_strategy="steps", eval_steps=2,
        wandb_project="merlina-e2e", wandb_mode="offline", use_tensorboard=True,
    )
    preprocess = run_cli(["axolotl", "preprocess", str(config)], cwd=tmp_path)
    summary = _summary(tmp_path / "prepared")
    assert [d["type"] for d in summary["datasets"]] == [e["type"] for e in entries]
    hh = pairs_files.rows("hh_rlhf.jsonl")
    empty, identical = pairs_files.quirks(hh)
    assert [d["pairs"] for d in summary["datasets"]] == [16, 16, 300, 6, len(hh), 25]
    assert all(d["skipped"] == 0 for d in summary["datasets"])
    assert [(d["empty_completions"], d["identical_pairs"]) for d in summary["datasets"]] == [
        (0, 0), (0, 0), (0, 0), (0, 0), (empty, identical), (0, 0)]
    assert summary["train_pairs"] + summary["eval_pairs"] == 363 + len(hh) and summary["eval_pairs"] > 0
    assert "prepared and saved" in preprocess.stdout + preprocess.stderr
    counts = (rf"0 skipped, {empty} empty completions \(trained as the end token alone\), "
              rf"{identical} pairs with identical chosen and rejected")
    assert re.search(counts, preprocess.stdout + preprocess.stderr), (preprocess.stdout + preprocess.stderr)[-3000:]

    train = run_cli(["axolotl", "train", str(config)], cwd=tmp_path, WANDB_MODE="offline", WANDB_DIR=str(tmp_path))
    output = train.stdout + train.stderr
    assert "loading the prepared copy" in output and "prepared and saved" not in output
    assert re.search(counts, output)  # trained by default on the empty completions, and said so
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert re.search(r"'eval_rewards/accuracies': '[0-9.]+'", output)
    # Shared prompt + packing are on by default: each distinct token is computed about once.
    ratios = [float(r) for r in re.findall(r"'tokens/processed_per_unique': '([0-9.]+)'", output)]
    assert ratios and max(ratios) < 1.1, ratios

    # An offline W&B run is one protobuf record log; its history records carry the metric keys verbatim.
    (wandb_run,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_run.read_bytes()
    for name in ("train/rewards/accuracies", "train/log_odds_ratio", "train/nll_loss", "train/or_loss",
                 "eval/rewards/margins", "eval/loss"):
        assert name.encode() in records, name
    _assert_tensorboard_has(tmp_path / "out", "train/rewards/chosen", "eval/log_odds_chosen")

    run_cli(["axolotl", "merge-lora", str(config), "--lora-model-dir", str(tmp_path / "out")], cwd=tmp_path)
    _assert_merged_model_loads(tmp_path / "out" / "merged", model_dir)


def _assert_tensorboard_has(output_dir, *tags):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(output_dir.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard events under {output_dir}"
    found = set()
    for event_file in events:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        found |= set(accumulator.Tags().get("scalars", []))
    assert set(tags) <= found, sorted(found)


def _assert_merged_model_loads(merged_dir, base_dir):
    import torch
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    ids = torch.tensor([[1, 422, 314, 2]])
    with torch.no_grad():
        assert torch.isfinite(merged(ids).logits).all()
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert any("q_proj" in n or "v_proj" in n for n in changed), "merging the adapter changed no weight"


def test_bad_rows_are_refused_with_the_row_then_skipped_on_request(tmp_path, model_dir):
    rows = json.loads(llamafactory_file().read_text())[:12]
    rows[2] = {**rows[2], "rejected": {"from": "gpt", "value": ""}}  # an empty answer: legal, counted
    rows[4] = {**rows[4], "rejected": {"from": "gpt"}}  # no `value`: structurally broken
    rows[9] = {**rows[9], "chosen": None}
    bad = tmp_path / "pairs.json"
    bad.write_text(json.dumps(rows))
    entry = [{"path": str(bad), "ds_type": "json", "type": "sharegpt"}]

    refused = run_cli(["axolotl", "preprocess", str(write_config(tmp_path, model_dir, entry))], cwd=tmp_path,
                      check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert re.search(rf"row 4 of {re.escape(str(bad))}: `rejected` message 0 has no `value`", output), output[-3000:]
    assert "1 more bad rows" in output

    config = write_config(tmp_path, model_dir, entry, merlina_skip_bad_rows=True)
    skipped = run_cli(["axolotl", "preprocess", str(config)], cwd=tmp_path)
    assert re.search(r"skipped 2 of 12 rows", skipped.stdout + skipped.stderr)
    (entry_summary,) = _summary(tmp_path / "prepared")["datasets"]
    assert (entry_summary["pairs"], entry_summary["empty_completions"]) == (10, 1)


def test_qlora_with_python_launcher_then_resume(tmp_path, model_dir):
    """4-bit QLoRA trains on CPU and evaluates on `test_datasets`; a second run resumes from the
    step-2 checkpoint and trains step 3 only."""
    pytest.importorskip("bitsandbytes")
    entry = [{"path": str(llamafactory_file()), "ds_type": "json", "type": "sharegpt"}]
    common = dict(
        adapter="qlora", load_in_4bit=True, save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2,
        test_datasets=[{"path": str(shared_path("ultrafeedback-h4-sample", "dummy_dpo.jsonl")), "ds_type": "json",
                        "type": "chat_template", "split": "train"}],
    )
    first = write_config(tmp_path, model_dir, entry, max_steps=2, **common)
    run_cli(["axolotl", "train", str(first), "--launcher", "python"], cwd=tmp_path)
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").exists()
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    evaluation = [log for log in history if "eval_loss" in log]
    assert evaluation and {"eval_rewards/accuracies", "eval_nll_loss", "eval_or_loss"} <= evaluation[-1].keys()

    second = write_config(tmp_path, model_dir, entry, max_steps=3, resume_from_checkpoint=str(checkpoint), **common)
    resumed = run_cli(["axolotl", "train", str(second)], cwd=tmp_path)
    state = json.loads((tmp_path / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    steps = [log["step"] for log in state["log_history"] if "loss" in log]
    assert steps == [1, 2, 3], steps  # steps 1-2 carried over from the checkpoint, 3 trained now
    assert "rewards/accuracies" in state["log_history"][-1] or "rewards/accuracies" in state["log_history"][-2]
    trained_now = re.findall(r"\{'loss': ", resumed.stdout + resumed.stderr)
    assert len(trained_now) == 1, "the resumed run should train step 3 only"


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, model_dir):
    """torchrun, 2 CPU processes (gloo) x 1 pair = 1 process x 2 pairs: the same losses and gradient
    norms at every step. A full fine-tune, so no random adapter init differs between the runs."""
    entry = [{"path": str(llamafactory_file()), "ds_type": "json", "type": "sharegpt"}]
    losses = {}
    for name, procs, micro in (("one", 1, 2), ("two", 2, 1)):
        directory = tmp_path / name
        directory.mkdir()
        config = write_config(directory, model_dir, entry, micro_batch_size=micro, max_steps=3, adapter=None, learning_rate=1e-4,
                              save_strategy="steps", save_steps=3, curriculum_sampling=True, dataset_prepared_path=str(tmp_path / "prepared"))
        run_cli(["torchrun", "--nproc_per_node", str(procs), "-m", "axolotl.cli.train", str(config)],
                cwd=directory)
        state = _final_state(directory / "out")
        losses[name] = [(log["loss"], log["nll_loss"], log["or_loss"], log["grad_norm"]) for log in state if "loss" in log]
    assert len(losses["one"]) == len(losses["two"]) == 3
    for one, two in zip(losses["one"], losses["two"]):
        assert two == pytest.approx(one, rel=1e-5)


def _final_state(output_dir) -> list[dict]:
    """The trainer's log history, from the last checkpoint or the final trainer_state.json."""
    candidates = sorted(output_dir.rglob("trainer_state.json"))
    assert candidates, f"no trainer_state.json under {output_dir}"
    return json.loads(candidates[-1].read_text())["log_history"]


# Axolotl's own recipe examples/mistral/orpo/mistral-qlora-orpo.yml (Apache-2.0, axolotl-ai-cloud/axolotl),
# reproduced verbatim as test input: the proof that an `rl: orpo` recipe migrates in two lines.
AXOLOTL_MISTRAL_QLORA_ORPO = """\
base_model: mistralai/Mistral-7B-v0.1
model_type: MistralForCausalLM
tokenizer_type: LlamaTokenizer
load_in_8bit: false
load_in_4bit: true
rl: orpo
orpo_alpha: 0.1
remove_unused_columns: false
chat_template: chatml
datasets:
  - path: argilla/ultrafeedback-binarized-preferences-cleaned
    type: chat_template.argilla
dataset_prepared_path: last_run_prepared
val_set_size: 0.1
output_dir: ./outputs/mistral-qlora-orpo-out
adapter: qlora
lora_model_dir:
sequence_len: 4096
sample_packing: false
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true
lora_target_modules:
  - gate_proj
  - down_proj
  - up_proj
  - q_proj
  - v_proj
  - k_proj
  - o_proj
wandb_project:
wandb_entity:
wandb_watch:
wandb_name:
wandb_log_model:
gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 1
optimizer: adamw_bnb_8bit
lr_scheduler: cosine
learning_rate: 0.0002
bf16: auto
tf32: false
gradient_checkpointing: true
resume_from_checkpoint:
logging_steps: 1
flash_attention: true
loss_watchdog_threshold: 5.0
loss_watchdog_patience: 3
warmup_ratio: 0.1
evals_per_epoch: 4
saves_per_epoch: 1
weight_decay: 0.0
special_tokens:
"""


def test_axolotl_orpo_recipe_migrates_in_two_lines(tmp_path):
    """Axolotl's Mistral QLoRA ORPO recipe with `rl: orpo_standalone` + the `plugins:` line trains.

    Changed besides the two lines, because this machine cannot do otherwise: the model and data
    point at local copies (a tiny Mistral; the H4 sample has the argilla layout: `prompt` +
    `chosen`/`rejected` conversations), and the CUDA-only parts are off (flash attention, bf16,
    the 8-bit optimizer, Axolotl's fused LoRA kernels).
    """
    import yaml

    pytest.importorskip("bitsandbytes")
    recipe = yaml.safe_load(AXOLOTL_MISTRAL_QLORA_ORPO)
    recipe["rl"] = "orpo_standalone"  # line 1
    recipe["plugins"] = ["merlina_orpo_plugin.MerlinaORPOPlugin"]  # line 2

    model = tiny_model_dir(tmp_path / "tiny-mistral", architecture="mistral")
    h4 = shared_path("ultrafeedback-h4-sample", "dummy_dpo.jsonl")
    recipe.update(base_model=str(model), output_dir=str(tmp_path / "out"))
    recipe["datasets"][0].update(path=str(h4), ds_type="json")
    recipe.update(flash_attention=False, bf16=False, optimizer="adamw_torch",
                  lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False)
    config = tmp_path / "mistral-qlora-orpo.yml"
    config.write_text(yaml.safe_dump(recipe, sort_keys=False))

    result = run_cli(["axolotl", "train", str(config)], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert re.search(r"'rewards/accuracies': '[0-9.]+'", output) and re.search(r"'eval_log_odds_chosen'", output)
