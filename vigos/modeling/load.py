"""Load the base (or merged) Qwen2.5-VL model and its processor from a `ModelConfig`.

The same calls serve the real 7B model (a Hub id or a local folder) and the tiny random model of
`vigos.modeling.tiny`. torch/transformers are imported inside the functions so importing this module is cheap.

This module is the one place the project loads a model or a processor (tests/faults/test_secrets.py checks): every
load passes `trust_remote_code=False`. Qwen2.5-VL is implemented by transformers itself, so code shipped inside a
model repository (an `auto_map` in its config) is never needed, and never run, whatever the repository asks for.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigos.config import ModelConfig
from vigos.errors import VigosError

if TYPE_CHECKING:  # pragma: no cover
    import torch

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_REQUIRED_FILES = ("config.json",)


def resolve_model_source(name_or_path: str) -> str:
    """Check that `name_or_path` is a model folder or looks like a Hub id; return it (local paths absolute).

    Raises VigosError when it is a local path that does not exist or is not a model folder.
    """
    if not name_or_path or not str(name_or_path).strip():
        raise VigosError(
            "model.name_or_path is empty; set it to a Hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct) or a folder"
        )
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise VigosError(f"model path {name_or_path} is a file, not a model folder (expected config.json inside)")
        missing = [f for f in _REQUIRED_FILES if not (path / f).is_file()]
        if missing:
            raise VigosError(
                f"{name_or_path} is not a model folder: {', '.join(missing)} missing; point model.name_or_path at a "
                "saved Qwen2.5-VL checkpoint (or build the tiny one: vigos model tiny --output DIR)"
            )
        return str(path.absolute())
    if _looks_like_hub_id(str(name_or_path)):
        return str(name_or_path)
    raise VigosError(
        f"model path {name_or_path} does not exist; set model.name_or_path to an existing folder or a Hub id, or build "
        f"the tiny model there: vigos model tiny --output {name_or_path}"
    )


def processor_from(source: str | Path) -> Any:
    """The processor saved in `source` (a folder or a Hub id) as it is, without running code from it."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(source, trust_remote_code=False)


def load_processor(cfg: ModelConfig, padding_side: str = "left") -> Any:
    """`AutoProcessor` with the config's image pixel budget and left padding (for batched generation)."""
    from transformers.image_utils import SizeDict

    source = resolve_model_source(cfg.name_or_path)
    if cfg.min_pixels > cfg.max_pixels:
        raise VigosError(f"model.min_pixels ({cfg.min_pixels}) is larger than model.max_pixels ({cfg.max_pixels})")
    try:
        processor = processor_from(source)
    except OSError as e:
        raise _load_error("processor", source, e) from e
    # Set the budget on the image processor itself. Passing min_pixels/max_pixels to from_pretrained (the Qwen
    # README way) also lands them in the tokenizer's init_kwargs, from where transformers 5 re-sends them to the
    # image processor on every call (a deprecated path that warns, and that a later processor.save_pretrained keeps).
    processor.image_processor.size = SizeDict(shortest_edge=cfg.min_pixels, longest_edge=cfg.max_pixels)
    processor.tokenizer.padding_side = padding_side
    return processor


def load_model(cfg: ModelConfig, device: str | torch.device | None = None) -> Any:
    """`Qwen2_5_VLForConditionalGeneration` in the config's dtype and attention implementation, in eval mode.

    `device` (e.g. "cuda:0"), when given, is where the weights are loaded directly (`device_map`).
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    source = resolve_model_source(cfg.name_or_path)
    dtype = getattr(torch, cfg.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise VigosError(f"model.dtype {cfg.dtype!r} is not a torch dtype; use bfloat16, float16 or float32")
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": cfg.attn_implementation}
    if device is not None:
        kwargs["device_map"] = str(device)
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(source, trust_remote_code=False, **kwargs)
    except OSError as e:
        raise _load_error("model", source, e) from e
    except ImportError as e:
        # e.g. attn_implementation="flash_attention_2" without the flash-attn package
        raise VigosError(
            f"cannot load {source} with model.attn_implementation={cfg.attn_implementation!r}: {e}; "
            "use model.attn_implementation=sdpa"
        ) from e
    model.eval()
    return model


def _looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name and not name.startswith(".")


def _load_error(what: str, source: str, error: Exception) -> VigosError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if Path(source).exists():
        return VigosError(f"cannot load the {what} from {source}: {first_line}")
    return VigosError(
        f"cannot load the {what} {source!r} from the Hugging Face Hub or its local cache: {first_line}; check the id, "
        "the network / HF_HUB_OFFLINE, and HF_TOKEN for gated models"
    )
