"""The one place that names the container images the components run in.

Set at compile time through the environment (`make compile-pipeline` / `python -m pipeline compile` read them),
so a release build can pin digests (`name@sha256:...`) without touching component code.
"""

import os

CPU_IMAGE = os.environ.get("VIGOS_CPU_IMAGE", "vigos/vigos-cpu:0.1.0")
"""Data prep, merge, publish: no GPU, no CUDA libraries."""
GPU_IMAGE = os.environ.get("VIGOS_GPU_IMAGE", "vigos/vigos-cuda:0.1.0")
"""Training and evaluation: CUDA torch + DeepSpeed."""
