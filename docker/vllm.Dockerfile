# syntax=docker/dockerfile:1
# Evaluation image (VIGOS_EVAL_IMAGE in components/images.py): the official vLLM OpenAI-server image, pinned, with
# the vigos package on top, for eval.backend=vllm (the evaluation step starts `vllm serve` inside its pod).
# Build from the repository root:
#   docker build -f docker/vllm.Dockerfile -t REGISTRY/vigos-vllm:TAG .        (or `make images`)
#
# vLLM pins its own torch/CUDA build; the training image keeps the project's torch (docker/cuda.Dockerfile). Here
# vigos is installed with --no-deps, and the few dependencies vLLM lacks (docker/requirements-vllm.txt) under a
# constraint file frozen from this image, so nothing vLLM installed can be replaced; the last RUN checks that
# torch is still the one vLLM shipped. vLLM's image runs Python 3.12 while pyproject.toml says <3.12 (the
# training image's pins): --ignore-requires-python, and the import check below is what vouches for it.
ARG VLLM_VERSION=v0.33.0
FROM vllm/vllm-openai:${VLLM_VERSION}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY docker/requirements-vllm.txt /tmp/requirements.txt
RUN python3 -c "import torch; print(torch.__version__)" > /tmp/torch-version \
    && python3 -m pip freeze > /tmp/vllm-constraints.txt \
    && python3 -m pip install --no-cache-dir --constraint /tmp/vllm-constraints.txt --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/vllm-constraints.txt
COPY pyproject.toml README.md /tmp/src/
COPY vigos /tmp/src/vigos
COPY pipeline /tmp/src/pipeline
COPY components /tmp/src/components
RUN python3 -m pip install --no-cache-dir --no-deps --ignore-requires-python /tmp/src \
    && rm -rf /tmp/src \
    && test "$(python3 -c 'import torch; print(torch.__version__)')" = "$(cat /tmp/torch-version)" \
    && rm /tmp/torch-version \
    && python3 -c "import vigos.steps, vigos.evaluation.run, vigos.generation.openai, components, vllm, openai" \
    && vllm --help > /dev/null

# Non-root user 1000 (numeric in USER, so `runAsNonRoot` can verify it); /mnt/vigos for HF_HOME without the volume.
RUN if id ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid 1000 vigos \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash vigos \
    && mkdir -p /mnt/vigos \
    && chown 1000:1000 /mnt/vigos

ARG GIT_COMMIT=unknown
ENV VIGOS_GIT_COMMIT=${GIT_COMMIT}

# The shared volume (PVC vigos-cache at /mnt/vigos): one Hugging Face cache per cluster.
ENV HF_HOME=/mnt/vigos/hf-cache \
    HF_HUB_DISABLE_TELEMETRY=1

USER 1000:1000
WORKDIR /home/vigos
# the vLLM image's entrypoint is the API server; KFP runs its own command, and `docker run` gets the CLI help
ENTRYPOINT []
CMD ["vigos", "--help"]
