# ViGOS: `make demo` and `make test` install first when needed, so each works alone on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch/torchvision are pinned here, not in pyproject: an unpinned torch pulls a multi-GB build (see README).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# DeepSpeed JIT-compiles its C++ ops on first use (30-90 s): keep them in the project's ignored cache.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export HF_HUB_DISABLE_TELEMETRY := 1
PIPELINE_YAML ?= build/vigos-pipeline.yaml

.PHONY: install demo test lint compile-pipeline bench clean help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	@echo "==> installing into $(VENV) (first time: a few minutes)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## Create .venv with everything the demo and the tests need

demo: install  ## Run the whole pipeline locally (kfp.local, tiny model, synthetic data, local MLflow)
	$(BIN)/python -m pipeline run-local

test: install  ## Run the test suite
	$(BIN)/pytest

lint: install  ## Static checks
	$(BIN)/ruff check vigos pipeline components tests benchmarks

compile-pipeline: install  ## Compile the KFP pipeline YAML to $(PIPELINE_YAML)
	$(BIN)/python -m pipeline compile --output $(PIPELINE_YAML)

bench: install  ## CPU benchmarks (ratios measured side by side)
	$(BIN)/python benchmarks/data_prep.py

clean:  ## Remove local run state (keeps .venv)
	rm -rf .vigos build .pytest_cache
