"""The one place that names the container images the components run in.

Set at compile time through the environment (`make compile-pipeline` / `python -m pipeline compile|submit` read
`build/images.env`, which `make images REGISTRY=...` writes), so a release build pins digests (`name@sha256:...`)
without touching component code. Without it the components name placeholders that exist in no registry:
`python -m pipeline compile` warns, `submit` and `schedule` refuse them (unless `--allow-unpinned-images`).
"""

import os
import re

PLACEHOLDER_CPU_IMAGE = "vigos/vigos-cpu:0.1.0"
PLACEHOLDER_GPU_IMAGE = "vigos/vigos-cuda:0.1.0"
PLACEHOLDER_EVAL_IMAGE = "vigos/vigos-vllm:0.1.0"
PLACEHOLDER_IMAGES = frozenset({PLACEHOLDER_CPU_IMAGE, PLACEHOLDER_GPU_IMAGE, PLACEHOLDER_EVAL_IMAGE})
"""The built-in names: no registry holds them."""

CPU_IMAGE = os.environ.get("VIGOS_CPU_IMAGE", PLACEHOLDER_CPU_IMAGE)
"""Data prep, merge, publish: no GPU, no CUDA libraries."""
GPU_IMAGE = os.environ.get("VIGOS_GPU_IMAGE", PLACEHOLDER_GPU_IMAGE)
"""Training (and the `engine` evaluation backend): the project's CUDA torch + DeepSpeed."""
EVAL_IMAGE = os.environ.get("VIGOS_EVAL_IMAGE", PLACEHOLDER_EVAL_IMAGE)
"""The evaluation steps: the official vLLM image with vigos on top (docker/vllm.Dockerfile); it runs every
`eval_backend` (`engine` on vLLM's torch, `vllm` / `openai` through the OpenAI-compatible path)."""

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def is_pinned(image: str) -> bool:
    """True for a digest-pinned name (`registry/name@sha256:<64 hex>`), what `make images` writes."""
    return image not in PLACEHOLDER_IMAGES and bool(_DIGEST.search(image))
