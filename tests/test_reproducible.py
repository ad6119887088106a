"""The same config and seed give the same run, bit for bit, on CPU: checked against a second run.

Through the real `axolotl train` CLI, LoRA and QLoRA (4-bit bitsandbytes), each config trained twice
side by side: every logged number and every adapter weight equal (before the plugin seeded in its
`pre_model_load` / `pre_lora_load` hooks, two LoRA runs drew two different adapters). Full fine-tuning
is checked the same way in tests/test_resume.py (the killed run's first four steps and checkpoint
against the uninterrupted run's). Through the Python API: `MerlinaORPOTrainer(peft_config=...)` draws
the same adapter and logs the same losses whatever the global RNG held before, and another seed draws
another adapter, so the equality is the seed's doing.
"""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset

from e2e_helpers import CliRun, write_config
from merlina_orpo_plugin import MerlinaORPOTrainer
from testkit import orpo_args, pairs_path, single_turn_pairs, tiny_llama

ENTRY = {"path": str(pairs_path("orca_dpo_pairs.jsonl")), "ds_type": "json", "type": "chat_template.intel"}
ADAPTERS = {"lora": {}, "qlora": {"adapter": "qlora", "load_in_4bit": True}}


def _run(directory, model, adapter) -> CliRun:
    directory.mkdir(parents=True)
    config = write_config(directory, model, [ENTRY], max_steps=4, save_strategy="steps", save_steps=4,
                          **ADAPTERS[adapter])
    return CliRun(["axolotl", "train", str(config), "--launcher", "python"], cwd=directory)


def _logs_and_adapter(output_dir):
    from safetensors.torch import load_file

    state = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())
    return [log for log in state["log_history"] if "loss" in log], load_file(output_dir / "adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.needs("axolotl", "bitsandbytes")
def test_the_same_yaml_and_seed_twice_through_axolotl_give_the_same_run(tmp_path, tiny_llama_dir):
    """LoRA and QLoRA, two runs each (all four side by side): the logged losses, gradient norms and ORPO
    metrics of every step are equal, and the adapters bit-identical."""
    runs = {(adapter, i): _run(tmp_path / f"{adapter}-{i}", tiny_llama_dir, adapter) for adapter in ADAPTERS for i in (1, 2)}
    for run in runs.values():
        run.result()
    first_logs = {}
    for adapter in ADAPTERS:
        (logs_1, weights_1), (logs_2, weights_2) = (_logs_and_adapter(tmp_path / f"{adapter}-{i}" / "out") for i in (1, 2))
        first_logs[adapter] = logs_1
        assert len(logs_1) == 4 and logs_1 == logs_2, adapter
        assert weights_1.keys() == weights_2.keys()
        assert all(torch.equal(weights_1[name], weights_2[name]) for name in weights_1), adapter
    assert first_logs["lora"][0]["loss"] != first_logs["qlora"][0]["loss"]  # the 4-bit base is another model


@pytest.mark.needs("axolotl")
def test_the_plugin_seeds_before_the_model_and_the_adapter_of_orpo_configs_only():
    """`pre_model_load` / `pre_lora_load` set torch's RNG from `seed` for an `rl: orpo_standalone` config
    (what `register` marks `merlina_enabled`) and leave it alone for any other."""
    from merlina_orpo_plugin.integration.plugin import MerlinaORPOPlugin

    plugin = MerlinaORPOPlugin()
    torch.manual_seed(5)
    expected = torch.rand(3)
    for hook in (lambda cfg: plugin.pre_model_load(cfg), lambda cfg: plugin.pre_lora_load(cfg, None)):
        torch.manual_seed(0)
        hook({"merlina_enabled": True, "seed": 5})
        assert torch.equal(torch.rand(3), expected)
        torch.manual_seed(0)
        hook({"seed": 5})  # SFT or Axolotl's own rl: not ours to touch
        assert not torch.equal(torch.rand(3), expected)


def _api_run(tmp_path, tokenizer, seed):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = MerlinaORPOTrainer(tiny_llama(seed=0), orpo_args(tmp_path, max_steps=3, seed=seed),
                                 train_dataset=Dataset.from_list(single_turn_pairs(6)), processing_class=tokenizer,
                                 peft_config=lora)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_A" in n}
    trainer.train()
    final = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    return initial, final, [(log["loss"], log["grad_norm"]) for log in trainer.state.log_history if "loss" in log]


def test_the_python_api_with_a_peft_config_is_reproducible(tmp_path, tokenizer):
    """Two runs with seed 0, the global RNG left in different states before each: the same adapter
    init, losses, gradient norms and final adapter; seed 1 draws another init."""
    torch.manual_seed(123)
    first = _api_run(tmp_path / "a", tokenizer, seed=0)
    torch.rand(1000)  # whatever ran before must not matter
    second = _api_run(tmp_path / "b", tokenizer, seed=0)
    other_init, _, _ = _api_run(tmp_path / "c", tokenizer, seed=1)
    for one, two in zip(first[:2], second[:2]):
        assert one.keys() == two.keys() and all(torch.equal(one[n], two[n]) for n in one)
    assert first[2] == second[2] and len(first[2]) == 3
    assert not any(torch.equal(first[0][n], other_init[n]) for n in other_init)


@pytest.mark.needs("axolotl")
def test_full_determinism_in_the_yaml_reaches_the_seeding_and_the_trainer(monkeypatch):
    """`full_determinism: true` (a key Axolotl 0.19's schema drops) is read by `register` from the raw YAML:
    the hooks then turn on deterministic torch algorithms, and the training arguments carry it."""
    from merlina_orpo_plugin.integration.plugin import MerlinaORPOPlugin

    for name in ("CUDA_LAUNCH_BLOCKING", "CUBLAS_WORKSPACE_CONFIG", "ASCEND_LAUNCH_BLOCKING", "HCCL_DETERMINISTIC",
                 "FLASH_ATTENTION_DETERMINISTIC"):
        monkeypatch.setenv(name, "")  # restored after the test: enable_full_determinism writes them
    for flag in ("deterministic", "benchmark"):
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    plugin = MerlinaORPOPlugin()
    cfg = {"rl": "orpo_standalone", "datasets": [dict(ENTRY)], "seed": 3, "full_determinism": True}
    plugin.register(cfg)
    cfg.pop("full_determinism")  # as Axolotl 0.19's validation leaves the config
    try:
        plugin.pre_lora_load(cfg, None)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert plugin.get_training_args({**cfg, "batch_size": 2})["full_determinism"] is True
