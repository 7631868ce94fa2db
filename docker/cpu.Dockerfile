# syntax=docker/dockerfile:1
# Data prep, merge, publish and the bookkeeping steps (VIGOS_CPU_IMAGE in components/images.py): no CUDA.
# Build from the repository root:
#   docker build -f docker/cpu.Dockerfile -t REGISTRY/vigos-cpu:TAG .          (or `make images`)
#
# torch/torchvision: the CPU builds (`+cpu`, from the PyTorch CPU index) of the pair the test suite runs (Makefile
# TORCH_PINS); they satisfy the `torch==` pins of docker/requirements-cpu.txt, which holds no CUDA package.
FROM python:3.11.14-slim-bookworm

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
           "torch==${TORCH_VERSION}+cpu" "torchvision==${TORCHVISION_VERSION}+cpu"

# Dependencies first (their layer survives code changes), then the project itself, without touching the pins.
COPY docker/requirements-cpu.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY pyproject.toml README.md /tmp/src/
COPY vigos /tmp/src/vigos
COPY pipeline /tmp/src/pipeline
COPY components /tmp/src/components
RUN pip install --no-cache-dir --no-deps /tmp/src \
    && rm -rf /tmp/src \
    && pip check \
    && python -c "import vigos, pipeline, components, torch; assert not torch.version.cuda"

# Non-root user 1000 (numeric in USER, so `runAsNonRoot` can verify it). /mnt/vigos exists so HF_HOME works
# without the shared volume too (e.g. `docker run`).
RUN groupadd --gid 1000 vigos \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash vigos \
    && mkdir -p /mnt/vigos \
    && chown 1000:1000 /mnt/vigos

# The shared volume (PVC vigos-cache at /mnt/vigos): one Hugging Face cache per cluster.
# The commit the image was built from (`make images` passes it): MLflow runs record it as mlflow.source.git.commit.
ARG GIT_COMMIT=unknown
ENV VIGOS_GIT_COMMIT=${GIT_COMMIT}

ENV HF_HOME=/mnt/vigos/hf-cache \
    HF_HUB_DISABLE_TELEMETRY=1

USER 1000:1000
WORKDIR /home/vigos
CMD ["vigos", "--help"]
