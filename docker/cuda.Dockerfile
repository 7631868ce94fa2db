# syntax=docker/dockerfile:1
# Training and evaluation image (VIGOS_GPU_IMAGE in components/images.py). Build from the repository root:
#   docker build -f docker/cuda.Dockerfile -t REGISTRY/vigos-cuda:TAG .        (or `make images`)
#
# CUDA pairing: torch 2.14.1 / torchvision 0.29.1 are the wheels the test suite runs (Makefile TORCH_PINS). Their
# PyPI builds target CUDA 13.0 and bring cuBLAS/cuDNN/NCCL as pip packages (docker/requirements-cuda.txt pins
# them), so the base is the matching CUDA 13.0 runtime. A100 (sm_80) is supported; nodes need an NVIDIA driver
# >= 580. Another pairing = another base tag + `make docker-requirements` from a venv with that torch.
#
# No nvcc is needed at run time: DeepSpeed ZeRO-2 runs with torch's AdamW as its client optimizer (no compiled
# DeepSpeed ops). gcc is installed because Triton (torch.compile, the compiled decode) builds a small C launcher.
#
# flash-attn is optional (model.attn_implementation=flash_attention_2; the default is sdpa):
#   --build-arg FLASH_ATTN_VERSION=2.8.3 --build-arg CUDA_FLAVOR=devel
# pip uses a prebuilt flash-attn wheel when one matches torch/CUDA/Python, else compiles it, which needs nvcc
# (the devel base) and takes long.
ARG CUDA_VERSION=13.0.2
ARG CUDA_FLAVOR=runtime

FROM ghcr.io/astral-sh/uv:0.9.9 AS uv

FROM nvidia/cuda:${CUDA_VERSION}-${CUDA_FLAVOR}-ubuntu24.04

ARG PYTHON_VERSION=3.11.14
ARG FLASH_ATTN_VERSION=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Python 3.11 (Ubuntu 24.04 ships 3.12): a standalone CPython build, installed by uv, in a venv owned by root.
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --python "${PYTHON_VERSION}" /opt/venv

# Dependencies first (their layer survives code changes), then the project itself, without touching the pins.
COPY docker/requirements-cuda.txt /tmp/requirements.txt
RUN uv pip install --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt
RUN if [ -n "${FLASH_ATTN_VERSION}" ]; then \
        uv pip install --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}"; \
    fi
COPY pyproject.toml README.md /tmp/src/
COPY vigos /tmp/src/vigos
COPY pipeline /tmp/src/pipeline
COPY components /tmp/src/components
RUN uv pip install --no-deps /tmp/src \
    && rm -rf /tmp/src \
    && uv pip check \
    && python -c "import vigos, pipeline, components, torch, deepspeed, transformers, peft"

# Non-root user 1000 (numeric in USER, so `runAsNonRoot` can verify it). The Ubuntu image's own `ubuntu` user
# holds 1000: remove it. /mnt/vigos exists so HF_HOME works without the shared volume too (e.g. `docker run`).
RUN if id ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid 1000 vigos \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash vigos \
    && mkdir -p /mnt/vigos \
    && chown 1000:1000 /mnt/vigos

# The shared volume (PVC vigos-cache at /mnt/vigos): one Hugging Face cache per cluster, JIT-built ops cached.
# The commit the image was built from (`make images` passes it): MLflow runs record it as mlflow.source.git.commit.
ARG GIT_COMMIT=unknown
ENV VIGOS_GIT_COMMIT=${GIT_COMMIT}

ENV HF_HOME=/mnt/vigos/hf-cache \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TORCH_EXTENSIONS_DIR=/mnt/vigos/torch-extensions

USER 1000:1000
WORKDIR /home/vigos
CMD ["vigos", "--help"]
