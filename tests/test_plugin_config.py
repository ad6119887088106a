"""The plugin's config handling through Axolotl's real `load_cfg` (YAML -> validated cfg), no training.

Checks the raw-config rewrite (`rl: orpo_standalone` -> causal builder + kept dataset entries),
its idempotence, beta resolution, and that options which cannot work are refused with a reason.
"""

from __future__ import annotations

import pytest

from e2e_helpers import write_config
from testkit import pairs_path


def _sharegpt():
    return [{"path": str(pairs_path("sharegpt_en.json")), "ds_type": "json", "type": "sharegpt", "split": "train"}]


def _load(tmp_path, tiny_llama_dir, datasets=None, **overrides):
    from axolotl.cli.config import load_cfg

    return load_cfg(str(write_config(tmp_path, tiny_llama_dir, datasets or _sharegpt(), **overrides)))


@pytest.mark.needs("axolotl")
def test_register_rewrites_rl_and_keeps_raw_dataset_entries(tmp_path, tiny_llama_dir):
    entry = {**_sharegpt()[0], "field_chosen": "chosen", "field_rejected": "rejected"}
    cfg = _load(tmp_path, tiny_llama_dir, [entry])
    assert cfg.rl is None and cfg.merlina_enabled is True
    assert cfg.merlina_datasets[0]["field_chosen"] == "chosen"  # SFT schema would have dropped it
    assert cfg.merlina_datasets[0]["type"] == "sharegpt"
    assert cfg.remove_unused_columns is False
    assert cfg.orpo_alpha == 0.1


@pytest.mark.needs("axolotl")
def test_register_is_idempotent():
    from merlina_orpo_plugin.integration.plugin import MerlinaORPOPlugin

    raw = {"rl": "orpo_standalone", "datasets": [{"path": "x.json", "type": "prompt_pairs", "field_prompt": "q"}]}
    plugin = MerlinaORPOPlugin()
    plugin.register(raw)
    once = {k: (list(v) if isinstance(v, list) else v) for k, v in raw.items()}
    plugin.register(raw)
    assert raw == once
    assert raw["merlina_datasets"][0]["field_prompt"] == "q" and "field_prompt" not in raw["datasets"][0]


@pytest.mark.needs("axolotl")
def test_plugin_listed_without_orpo_standalone_changes_nothing():
    from merlina_orpo_plugin.integration.plugin import MerlinaORPOPlugin

    raw = {"rl": "dpo", "datasets": [{"path": "x.json", "type": "chatml.intel"}]}
    MerlinaORPOPlugin().register(raw)
    assert raw == {"rl": "dpo", "datasets": [{"path": "x.json", "type": "chatml.intel"}]}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sample_packing": True}, r"`sample_packing` does not work with `rl: orpo_standalone`"),
        ({"do_causal_lm_eval": True}, r"`do_causal_lm_eval` does not work"),
        ({"orpo_alpha": 0.1, "rl_beta": 0.2}, r"conflicting ORPO beta: `orpo_alpha: 0.1`, `rl_beta: 0.2`"),
        ({"merlina_max_prompt_length": 512},
         r"`max_prompt_length` \(YAML: `merlina_max_prompt_length`\) must be smaller than `max_length` "
         r"\(YAML: `sequence_len`\), got 512 and 256"),
        ({"merlina_max_completion_length": 0},
         r"`max_completion_length` \(YAML: `merlina_max_completion_length`\) must be >= 1, got 0"),
    ],
)
@pytest.mark.needs("axolotl")
def test_bad_options_fail_validation_with_the_key_and_fix(tmp_path, tiny_llama_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        _load(tmp_path, tiny_llama_dir, **overrides)


@pytest.mark.needs("axolotl")
def test_speed_options_reach_the_training_arguments(tmp_path, tiny_llama_dir):
    from merlina_orpo_plugin.integration.plugin import MerlinaORPOPlugin

    defaults = MerlinaORPOPlugin().get_training_args(_load(tmp_path, tiny_llama_dir))
    assert (defaults["merlina_prefix_sharing"], defaults["merlina_padding_free"], defaults["merlina_loss_chunk_size"]) == (
        True, True, 512
    )
    assert defaults["merlina_max_length"] == 256
    off = MerlinaORPOPlugin().get_training_args(
        _load(tmp_path, tiny_llama_dir, merlina_prefix_sharing=False, merlina_padding_free=False, merlina_loss_chunk_size=0)
    )
    assert (off["merlina_prefix_sharing"], off["merlina_padding_free"], off["merlina_loss_chunk_size"]) == (False, False, 0)


@pytest.mark.needs("axolotl")
def test_negative_loss_chunk_size_is_refused(tmp_path, tiny_llama_dir):
    with pytest.raises(ValueError, match="merlina_loss_chunk_size"):
        _load(tmp_path, tiny_llama_dir, merlina_loss_chunk_size=-1)


@pytest.mark.needs("axolotl")
def test_unknown_dataset_type_lists_available(tmp_path, tiny_llama_dir):
    entry = {**_sharegpt()[0], "type": "chat_template.nope"}
    with pytest.raises(ValueError, match=r"chat_template\.nope.*chat_template\.argilla.*sharegpt"):
        _load(tmp_path, tiny_llama_dir, [entry])


@pytest.mark.needs("axolotl")
def test_rl_beta_is_accepted_as_beta(tmp_path, tiny_llama_dir):
    from merlina_orpo_plugin.integration.args import resolve_beta

    cfg = _load(tmp_path, tiny_llama_dir, orpo_alpha=None, rl_beta=0.25)
    assert resolve_beta(cfg) == 0.25


def test_prepared_data_cache_key_covers_what_changes_the_tokens(tmp_path, tokenizer):
    """Same inputs, same key; any option that changes the tokens, or an edited data file, a new key."""
    import os

    from merlina_orpo_plugin.integration.data_options import DataOptions
    from merlina_orpo_plugin.integration.datasets import dataset_hash

    def key_of(cfg):
        return dataset_hash(DataOptions.from_cfg(cfg), tokenizer)

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    cfg = {"merlina_datasets": [{"path": str(data), "type": "prompt_pairs"}], "sequence_len": 256, "seed": 1}
    key = key_of(cfg)
    assert key_of(dict(cfg)) == key
    for change in ({"sequence_len": 512}, {"merlina_max_prompt_length": 64}, {"merlina_skip_bad_rows": True},
                   {"merlina_max_completion_length": 32}, {"val_set_size": 0.1}, {"seed": 2},
                   {"shuffle_merged_datasets": False},
                   {"merlina_datasets": [{"path": str(data), "type": "prompt_pairs", "field_prompt": "q"}]}):
        assert key_of({**cfg, **change}) != key, change
    stat = data.stat()
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "d"}\n')
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert key_of(cfg) != key


@pytest.mark.needs("axolotl")
def test_total_steps_count_zero_values_as_given():
    """`max_steps` wins when > 0 (the Trainer ignores 0); `num_epochs` counts as written, 0 included."""
    from merlina_orpo_plugin.integration.plugin import total_num_steps

    assert total_num_steps({"max_steps": 5, "num_epochs": 3, "batch_size": 4}, 100) == 5
    assert total_num_steps({"max_steps": 0, "num_epochs": 2, "batch_size": 4}, 10) == 5  # ceil(10 * 2 / 4)
    assert total_num_steps({"num_epochs": None, "batch_size": 4}, 10) == 3  # unset: one epoch
    assert total_num_steps({"num_epochs": 0, "batch_size": 4}, 10) == 0


@pytest.mark.needs("axolotl")
def test_the_model_config_is_read_once_per_load_of_the_datasets(tmp_path, tiny_llama_dir, monkeypatch):
    """`DataOptions.from_cfg` reads it once; the cache key and every entry's tokenisation reuse the answer."""
    import axolotl.loaders.utils as loader_utils
    from axolotl.loaders import load_tokenizer

    from merlina_orpo_plugin.integration.datasets import load_orpo_datasets

    cfg = _load(tmp_path, tiny_llama_dir, _sharegpt() * 2)
    assert len(cfg.merlina_datasets) == 2
    tokenizer = load_tokenizer(cfg)
    reads = []
    real = loader_utils.load_model_config
    monkeypatch.setattr(loader_utils, "load_model_config", lambda *a, **k: reads.append(a) or real(*a, **k))
    train, _, summary = load_orpo_datasets(cfg, tokenizer)
    assert len(summary["datasets"]) == 2 and len(train) > 0
    assert len(reads) == 1


@pytest.mark.needs("axolotl")
def test_each_stage_releases_the_rows_it_has_read_before_the_next_one(tmp_path, tiny_llama_dir, monkeypatch):
    """The raw rows' Arrow file is memory-mapped and every page of it was read by the strategy: while it
    stayed referenced during tokenisation, those pages counted in the process's RSS beside the checked
    pairs' file (about 2x the dataset's size at the peak; `python -m benchmarks preprocess-scale`)."""
    import gc
    import weakref

    from axolotl.loaders import load_tokenizer

    from merlina_orpo_plugin.integration import datasets as integration_datasets
    from merlina_orpo_plugin.integration import mapping

    cfg = _load(tmp_path, tiny_llama_dir)
    raws, alive_at_tokenising = [], []
    real_load, real_tokenise = integration_datasets.load_raw_dataset, mapping.tokenise_pairs

    def load(*args, **kwargs):
        raw = real_load(*args, **kwargs)
        raws.append(weakref.ref(raw))
        return raw

    def tokenise(*args, **kwargs):
        gc.collect()  # only a reference still held keeps it alive, not an uncollected cycle
        alive_at_tokenising.append(raws[-1]() is not None)
        return real_tokenise(*args, **kwargs)

    monkeypatch.setattr(integration_datasets, "load_raw_dataset", load)
    monkeypatch.setattr(mapping, "tokenise_pairs", tokenise)
    train, _, summary = integration_datasets.load_orpo_datasets(cfg, load_tokenizer(cfg))
    assert len(train) > 0 and summary["datasets"][0]["rows"] > 0
    assert alive_at_tokenising == [False]
