# syntax=docker/dockerfile:1
# Evaluation image (VIGOS_EVAL_IMAGE in components/images.py): the official vLLM OpenAI-server image, pinned, with
# the vigos package on top, for eval.backend=vllm (the evaluation step starts `vllm serve` inside its pod).
# Build from the repository root:
#   docker build -f docker/vllm.Dockerfile -t REGISTRY/vigos-vllm:TAG .        (or `make images`)
#
# vLLM pins its own torch/CUDA build; the training image keeps the project's torch (docker/cuda.Dockerfile). Here
# vigos is installed with --no-deps, and the few dependencies vLLM lacks (docker/requirements-vllm.txt) under a
# constraint file of every installed name==version (`pip list`: no URL or editable lines, which pip refuses as
# constraints), so nothing vLLM installed can be replaced; the last RUN checks that torch is still vLLM's.
# vLLM 0.33.0 (PyPI, 2026-11-02; the newest release): torch==2.13.0, torchvision==0.28.0,
# transformers>=5.16.1,<5.20, Python >=3.11,<3.15; its image runs Python 3.12 (pyproject.toml allows 3.11-3.12).
# Its transformers is below pyproject's (>=5.23): the model runs in vLLM, vigos only needs the processor (prompt,
# token count, image sizing), which docker/check_eval_image.py exercises on the tiny model at build time.
ARG VLLM_VERSION=v0.33.0
FROM vllm/vllm-openai:${VLLM_VERSION}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY docker/requirements-vllm.txt /tmp/requirements.txt
RUN python3 -c "import torch; print(torch.__version__)" > /tmp/torch-version \
    && python3 -m pip list --format=freeze > /tmp/vllm-constraints.txt \
    && python3 -m pip install --no-cache-dir --constraint /tmp/vllm-constraints.txt --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/vllm-constraints.txt
COPY pyproject.toml README.md /tmp/src/
COPY vigos /tmp/src/vigos
COPY pipeline /tmp/src/pipeline
COPY components /tmp/src/components
COPY docker/check_eval_image.py /tmp/check_eval_image.py
RUN python3 -m pip install --no-cache-dir --no-deps /tmp/src \
    && rm -rf /tmp/src \
    && test "$(python3 -c 'import torch; print(torch.__version__)')" = "$(cat /tmp/torch-version)" \
    && rm /tmp/torch-version \
    && python3 -c "import vigos.steps, vigos.evaluation.run, vigos.generation.openai, components, vllm, openai" \
    && HF_HUB_OFFLINE=1 python3 /tmp/check_eval_image.py \
    && rm /tmp/check_eval_image.py \
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
