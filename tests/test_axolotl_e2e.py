"""The plugin end to end through the real `axolotl` CLI: preprocess, train, merge-lora, QLoRA, resume,
torchrun, an encoder-decoder, and refused rows.

Each test runs real Axolotl commands in subprocesses on a tiny local model (a Llama or a Mistral with
the real SmolLM2 tokenizer, a T5 with its vocabulary) and the project's preference files in public
layouts (tests/assets/pairs), offline on CPU, and checks what the commands left on disk (prepared
data, adapters, checkpoints, W&B and TensorBoard logs, generations) and printed. Every check that
shares a code path shares a run: the six dataset types, the skipped bad rows, evaluation on
`test_datasets`, W&B, TensorBoard and the generations table are one preprocess + train; Axolotl's own
QLoRA recipe is also the run that a second run resumes. Two short runs (the refused rows, the T5) go
in the background at the start, beside the others: most of a CPU run is importing Python.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

from e2e_helpers import CliRun, run_cli, write_config
from merlina_orpo_plugin.generation import COLUMNS
from merlina_orpo_plugin.integration.prepared_cache import MANIFEST
from testkit import REPO, generation_rows, pairs_path, pairs_rows, quirks, single_turn_pairs, tiny_model_dir, tiny_t5_dir

pytestmark = [pytest.mark.slow, pytest.mark.needs("axolotl")]
CPU_LAUNCH = REPO / "tests" / "cpu_launch.py"  # torchrun's script for axolotl.cli.train


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _bad_sharegpt_file(directory):
    """The first 12 ShareGPT rows, two broken (rows 4 and 9) and one with an empty answer (row 2, legal)."""
    rows = pairs_rows("sharegpt_en.json")[:12]
    rows[2] = {**rows[2], "rejected": {"from": "gpt", "value": ""}}  # an empty answer: legal, counted
    rows[4] = {**rows[4], "rejected": {"from": "gpt"}}  # no `value`: structurally broken
    rows[9] = {**rows[9], "chosen": None}
    path = directory / "pairs.json"
    path.write_text(json.dumps(rows))
    return path, [row for i, row in enumerate(rows) if i not in (4, 9)]


# --- side runs: started in the background when the module starts, checked by their own tests ----


def _refused_run(directory, model_dir):
    path, _ = _bad_sharegpt_file(directory)
    config = write_config(directory, model_dir, [{"path": str(path), "ds_type": "json", "type": "sharegpt"}])
    return CliRun(["axolotl", "preprocess", str(config)], cwd=directory), path


def _t5_run(directory):
    """`model_type: AutoModelForSeq2SeqLM`, LoRA on T5's `q` and `v`: the encoder-decoder path through Axolotl."""
    model = tiny_t5_dir(directory / "t5")
    data = _jsonl(directory / "pairs.jsonl", single_turn_pairs(12))
    config = write_config(
        directory, model, [{"path": str(data), "ds_type": "json", "type": "prompt_pairs"}],
        model_type="AutoModelForSeq2SeqLM", lora_target_modules=["q", "v"], sequence_len=128, val_set_size=0.25,
        eval_strategy="steps", eval_steps=3, max_steps=3,
    )
    return CliRun(["axolotl", "train", str(config), "--launcher", "python"], cwd=directory), directory / "out"


SIDE_RUNS = {"test_bad_rows_are_refused_naming_the_file_row_and_field": "refused",
             "test_an_encoder_decoder_recipe_trains_and_evaluates": "t5"}


@pytest.fixture(scope="module", autouse=True)
def side_runs(request, tmp_path_factory, tiny_llama_dir):
    """The side runs whose tests are selected, started now; {name: (CliRun, extra)}; ended at teardown."""
    selected = {SIDE_RUNS[item.originalname] for item in request.session.items
                if item.module is request.module and item.originalname in SIDE_RUNS}
    runs = {}
    if "refused" in selected:
        runs["refused"] = _refused_run(tmp_path_factory.mktemp("refused"), tiny_llama_dir)
    if "t5" in selected:
        runs["t5"] = _t5_run(tmp_path_factory.mktemp("t5"))
    yield runs
    for run, _ in runs.values():
        run.stop()


# --- the main run --------------------------------------------------------------------------------


def _every_type(tmp_path) -> list[tuple[dict, list[dict], tuple[int, int]]]:
    """(dataset entry, the rows it keeps, their (empty answers, identical pairs)): every built-in type,
    plus a ShareGPT file with two broken rows that `merlina_skip_bad_rows` skips."""
    h4 = pairs_rows("ultrafeedback_h4.jsonl")
    stack = pairs_rows("stack_exchange.json")
    bad, kept = _bad_sharegpt_file(tmp_path)
    entries = [
        ({"path": str(pairs_path("ultrafeedback_h4.jsonl")), "ds_type": "json", "type": "chat_template.argilla"}, h4),
        ({"path": str(pairs_path("ultrafeedback_h4.jsonl")), "ds_type": "json", "type": "chat_template"}, h4),
        ({"path": str(pairs_path("sharegpt_en.json")), "ds_type": "json", "type": "sharegpt"},
         pairs_rows("sharegpt_en.json")),
        ({"path": str(pairs_path("orca_dpo_pairs.jsonl")), "ds_type": "json", "type": "chat_template.intel"},
         pairs_rows("orca_dpo_pairs.jsonl")),
        # HH-RLHF's four subsets, with empty final Assistant turns and identical pairs
        ({"path": str(pairs_path("hh_rlhf.jsonl")), "ds_type": "json", "type": "hh_rlhf"}, pairs_rows("hh_rlhf.jsonl")),
        ({"path": str(pairs_path("stack_exchange.json")), "ds_type": "json", "type": "prompt_pairs",
          "field_prompt": "question", "field_chosen": "response_j", "field_rejected": "response_k"},
         [{"chosen": r["response_j"], "rejected": r["response_k"]} for r in stack]),
        ({"path": str(bad), "ds_type": "json", "type": "sharegpt"}, kept),
    ]
    return [(entry, rows, quirks(rows)) for entry, rows in entries]


def _summary(prepared_dir) -> dict:
    (path,) = prepared_dir.glob(f"merlina-orpo-*/{MANIFEST}")
    return json.loads(path.read_text())["summary"]


def test_every_type_preprocess_then_train_with_cache_wandb_tensorboard_generations_then_merge(tmp_path, tiny_llama_dir):
    """preprocess tokenises all six types once (HH-RLHF rows with empty final turns included and counted,
    the broken rows of the last file skipped on request, the rest of that file kept); train reuses that
    cache, evaluates on `test_datasets`, logs ORPO metrics to W&B (offline) and TensorBoard and the
    generations table (`eval_table_size`) to both and to a JSONL; merge-lora gives a loadable model."""
    types = _every_type(tmp_path)
    entries = [entry for entry, _, _ in types]
    test_entry = {"path": str(pairs_path("ultrafeedback_h4.jsonl")), "ds_type": "json", "type": "chat_template"}
    config = write_config(
        tmp_path, tiny_llama_dir, entries, merlina_skip_bad_rows=True, test_datasets=[test_entry], max_steps=2,
        eval_strategy="steps", eval_steps=2, wandb_project="merlina-e2e", wandb_mode="offline", use_tensorboard=True,
        eval_table_size=4, eval_max_new_tokens=8,
    )
    preprocess = run_cli(["axolotl", "preprocess", str(config)], cwd=tmp_path)
    output = preprocess.stdout + preprocess.stderr
    summary = _summary(tmp_path / "prepared")
    datasets, test = summary["datasets"][:-1], summary["datasets"][-1]
    assert [d["type"] for d in datasets] == [e["type"] for e in entries] and test["type"] == "chat_template"
    assert [d["skipped"] for d in datasets] == [0] * (len(entries) - 1) + [2]
    assert [d["pairs"] for d in datasets] == [len(rows) for _, rows, _ in types]
    assert [(d["empty_completions"], d["identical_pairs"]) for d in datasets] == [counts for _, _, counts in types]
    hh = next(counts for entry, _, counts in types if entry["type"] == "hh_rlhf")
    assert hh[0] > 0 and hh[1] > 0  # HH-RLHF's empty final turns are accepted as they come: none was refused
    assert summary["train_pairs"] == sum(len(rows) for _, rows, _ in types)
    assert summary["eval_pairs"] == test["pairs"] == len(pairs_rows("ultrafeedback_h4.jsonl"))
    assert "prepared and saved" in output
    assert re.search(rf"{re.escape(str(entries[-1]['path']))}: skipped 2 of 12 rows", output), output[-3000:]
    empty, identical = (sum(counts[i] for _, _, counts in types) + quirks(pairs_rows("ultrafeedback_h4.jsonl"))[i]
                        for i in (0, 1))
    counts = (rf"2 skipped, {empty} empty completions \(trained as the end token alone\), "
              rf"{identical} pairs with identical chosen and rejected")
    assert re.search(counts, output), output[-3000:]

    train = run_cli(["axolotl", "train", str(config)], cwd=tmp_path, WANDB_DIR=str(tmp_path))
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
                 "eval/rewards/margins", "eval/loss", "eval/generations"):
        assert name.encode() in records, name
    # Axolotl evaluates before the first step (it sets `eval_on_start`) and at `eval_steps`.
    _assert_generations_logged(tmp_path, wandb_run.parent, steps=[0, 2], prompts=4)

    run_cli(["axolotl", "merge-lora", str(config), "--lora-model-dir", str(tmp_path / "out")], cwd=tmp_path)
    _assert_merged_model_loads(tmp_path / "out" / "merged", tiny_llama_dir)


def _assert_generations_logged(tmp_path, wandb_dir, steps, prompts):
    """The generations of each evaluation: a JSONL in output_dir, a W&B table file, TensorBoard text;
    and the ORPO scalars in TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = generation_rows(tmp_path / "out")
    assert [row["step"] for row in rows] == [step for step in steps for _ in range(prompts)]
    assert all(set(row) == set(COLUMNS) and row["prompt"] and row["sample"] for row in rows)

    # W&B writes each logged table as JSON: files/media/table/<key>_<W&B's own step>_<hash>.table.json.
    tables = sorted(wandb_dir.glob("files/media/table/eval/generations_*.table.json"))
    assert len(tables) == len(steps), sorted(p.name for p in wandb_dir.rglob("*") if p.is_file())
    table = json.loads(tables[0].read_text())
    assert table["columns"] == list(COLUMNS)
    assert [row[COLUMNS.index("prompt")] for row in table["data"]] == [row["prompt"] for row in rows[:prompts]]

    scalars, texts = set(), []
    for event_file in (tmp_path / "out").rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(event_file), size_guidance={"tensors": 0})
        events.Reload()
        scalars |= set(events.Tags().get("scalars", []))
        if "eval/generations/text_summary" in events.Tags().get("tensors", []):
            texts += events.Tensors("eval/generations/text_summary")
    assert {"train/rewards/chosen", "eval/log_odds_chosen"} <= scalars, sorted(scalars)
    assert [event.step for event in texts] == steps
    assert rows[0]["sample"].replace("|", "\\|").replace("\n", "<br>") in texts[0].tensor_proto.string_val[0].decode()


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


# --- the side runs' checks ------------------------------------------------------------------------


def test_bad_rows_are_refused_naming_the_file_row_and_field(side_runs):
    """Without `merlina_skip_bad_rows` the first broken row stops preprocessing, and the command says
    which (the skipping is checked in the main run)."""
    run, path = side_runs["refused"]
    refused = run.result(check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert re.search(rf"row 4 of {re.escape(str(path))}: `rejected` message 0 has no `value`", output), output[-3000:]
    assert "1 more bad rows" in output


def test_an_encoder_decoder_recipe_trains_and_evaluates(side_runs):
    """A T5 through `axolotl train`: the plugin tokenises for the encoder and the decoder, 3 steps train,
    the evaluation logs ORPO's metrics, and the LoRA adapter is saved."""
    run, output_dir = side_runs["t5"]
    result = run.result()
    output = result.stdout + result.stderr
    assert len(re.findall(r"\{'loss': '[0-9.]+'", output)) == 3, output[-3000:]
    for metric in ("eval_loss", "eval_rewards/accuracies", "eval_log_odds_chosen", "eval_nll_loss", "eval_or_loss"):
        assert re.search(rf"'{metric}': '-?[0-9.]+'", output), metric
    from safetensors import safe_open

    # Axolotl writes `task_type: CAUSAL_LM` for every model but classifiers; the weights say what trained:
    # q and v of the encoder's and the decoder's self-attention and of the decoder's cross-attention.
    with safe_open(output_dir / "adapter_model.safetensors", "pt") as adapter:
        names = {re.sub(r"\.block\.\d+\.layer\.\d+", "", key) for key in adapter.keys()}
    assert {f"base_model.model.{part}.{proj}.lora_{ab}.weight" for part in ("encoder.SelfAttention",
            "decoder.SelfAttention", "decoder.EncDecAttention") for proj in "qv" for ab in "AB"} == names


# --- QLoRA: Axolotl's own recipe, then a resume ----------------------------------------------------

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


def test_axolotl_qlora_recipe_migrates_in_two_lines_then_resumes(tmp_path):
    """Axolotl's Mistral QLoRA ORPO recipe with `rl: orpo_standalone` + the `plugins:` line trains in 4 bits
    on CPU (`--launcher python`), evaluates on its `val_set_size` split and saves at step 2; a second run
    resumes from that checkpoint and trains step 3 only.

    Changed besides the two lines, because this machine cannot do otherwise: the model and data point
    at local copies (a tiny Mistral; the H4-layout file has the argilla layout: `prompt` +
    `chosen`/`rejected` conversations), the CUDA-only parts are off (flash attention, bf16, the 8-bit
    optimizer, Axolotl's fused LoRA kernels); and for the resume, 2 steps with a save at step 2.
    """
    import yaml

    recipe = yaml.safe_load(AXOLOTL_MISTRAL_QLORA_ORPO)
    recipe["rl"] = "orpo_standalone"  # line 1
    recipe["plugins"] = ["merlina_orpo_plugin.MerlinaORPOPlugin"]  # line 2

    model = tiny_model_dir(tmp_path / "tiny-mistral", architecture="mistral")
    recipe.update(base_model=str(model), output_dir=str(tmp_path / "out"))
    recipe["datasets"][0].update(path=str(pairs_path("ultrafeedback_h4.jsonl")), ds_type="json")
    recipe.update(flash_attention=False, bf16=False, optimizer="adamw_torch",
                  lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False)
    recipe.update(max_steps=2, saves_per_epoch=None, save_steps=2)
    first = tmp_path / "mistral-qlora-orpo.yml"
    first.write_text(yaml.safe_dump(recipe, sort_keys=False))

    trained = run_cli(["axolotl", "train", str(first), "--launcher", "python"], cwd=tmp_path)
    output = trained.stdout + trained.stderr
    assert re.search(r"'rewards/accuracies': '[0-9.]+'", output) and re.search(r"'eval_log_odds_chosen'", output)
    summary = _summary(tmp_path / "last_run_prepared")  # the recipe's own dataset_prepared_path, under cwd
    assert summary["eval_pairs"] > 0  # split off by val_set_size
    assert summary["train_pairs"] + summary["eval_pairs"] == len(pairs_rows("ultrafeedback_h4.jsonl"))
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").exists()
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    evaluation = [log for log in history if "eval_loss" in log]
    assert evaluation and {"eval_rewards/accuracies", "eval_nll_loss", "eval_or_loss"} <= evaluation[-1].keys()

    second = tmp_path / "resume.yml"
    second.write_text(yaml.safe_dump({**recipe, "max_steps": 3, "resume_from_checkpoint": str(checkpoint)}))
    resumed = run_cli(["axolotl", "train", str(second), "--launcher", "python"], cwd=tmp_path)
    state = json.loads((tmp_path / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    steps = [log["step"] for log in state["log_history"] if "loss" in log]
    assert steps == [1, 2, 3], steps  # steps 1-2 carried over from the checkpoint, 3 trained now
    assert "rewards/accuracies" in state["log_history"][-1] or "rewards/accuracies" in state["log_history"][-2]
    trained_now = re.findall(r"\{'loss': ", resumed.stdout + resumed.stderr)
    assert len(trained_now) == 1, "the resumed run should train step 3 only"
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


# --- torchrun ---------------------------------------------------------------------------------------


def test_two_processes_and_two_nodes_match_one_process_with_the_same_global_batch(tmp_path, tiny_llama_dir):
    """torchrun, 2 CPU processes (gloo) x 1 pair, and 2 torchrun "nodes" (`--nnodes 2`, c10d rendezvous
    on 127.0.0.1, 1 process each) x 1 pair = 1 process x 2 pairs: the same losses and gradient norms at
    every step. A full fine-tune, so no random adapter init differs between the runs. All runs go side
    by side, sharing one prepared copy of the data (built under its file lock)."""
    entry = [{"path": str(pairs_path("sharegpt_en.json")), "ds_type": "json", "type": "sharegpt"}]
    endpoint = f"127.0.0.1:{_free_port()}"
    launches = {  # --standalone: a free port each; cpu_launch: Axolotl's p2p check on a CUDA build (test_host_repros.py)
        "one": [["--standalone", "--nproc_per_node", "1"]],
        "two": [["--standalone", "--nproc_per_node", "2"]],
        "nodes": [["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
                   "--rdzv_id", "orpo-nodes"]] * 2,  # the same command on each "node", as on two machines
    }
    runs = {}
    for name, launchers in launches.items():
        directory = tmp_path / name
        directory.mkdir()
        config = write_config(directory, tiny_llama_dir, entry, micro_batch_size=2 if name == "one" else 1,
                              max_steps=3, adapter=None, learning_rate=1e-4, save_strategy="steps", save_steps=3,
                              curriculum_sampling=True, dataset_prepared_path=str(tmp_path / "prepared"))
        runs[name] = [CliRun(["torchrun", *launcher, str(CPU_LAUNCH), "axolotl.cli.train", str(config)], cwd=directory)
                      for launcher in launchers]
    losses = {}
    for name, node_runs in runs.items():
        for run in node_runs:
            run.result()
        state = _final_state(tmp_path / name / "out")
        losses[name] = [(log["loss"], log["nll_loss"], log["or_loss"], log["grad_norm"]) for log in state if "loss" in log]
    assert len(losses["one"]) == len(losses["two"]) == len(losses["nodes"]) == 3
    for one, two, nodes in zip(losses["one"], losses["two"], losses["nodes"]):
        assert two == pytest.approx(one, rel=1e-5)
        assert nodes == pytest.approx(one, rel=1e-5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _final_state(output_dir) -> list[dict]:
    """The trainer's log history, from the last checkpoint or the final trainer_state.json."""
    candidates = sorted(output_dir.rglob("trainer_state.json"))
    assert candidates, f"no trainer_state.json under {output_dir}"
    return json.loads(candidates[-1].read_text())["log_history"]
