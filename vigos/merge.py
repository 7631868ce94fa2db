"""LoRA merge: adapter + base -> full safetensors (sharded) + processor + generation config, verified.

The base comes from the adapter's `adapter_config.json` unless given. The merge runs on CPU in the output dtype
(bf16 by default, as the model card publishes it). Before anything is published, the merged model is reloaded
FROM DISK and its logits on a probe (an image + the student prompt) are compared with the adapter-on model's:
a mismatch fails the step. In float32 the check is tight (1e-4 of the logits' scale). In bf16 the adapter-on model
itself differs from its float32 self by a few percent of the logits' scale on small models, so there the merged
logits must instead be within 10% of the adapter's own effect (|adapter-on - base|) of the adapter-on logits: a
merge that lost, doubled or mis-scaled the adapter is off by about 100% of that effect and fails.

Writes are atomic: a scratch folder beside the output, renamed into place at the end.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from vigos.errors import VigosError, disk_writes

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# allowed max |merged - adapter-on| on the probe = max(SCALE_TOL * max|adapter-on|, EFFECT_TOL * max|adapter effect|)
SCALE_TOL = {"float32": 1e-4, "bfloat16": 1e-2, "float16": 2e-3}
EFFECT_TOL = {"float32": 0.0, "bfloat16": 0.1, "float16": 0.1}


@dataclass
class MergeResult:
    output_dir: Path
    base_model: str
    max_abs_diff: float
    relative_diff: float
    allowed_diff: float
    seconds: float
    shards: int


def adapter_base(adapter_dir: Path) -> str:
    cfg_path = adapter_dir / "adapter_config.json"
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).exists()]
    if missing:
        raise VigosError(f"{adapter_dir} is not a LoRA adapter: missing {', '.join(missing)} "
                         "(point --adapter at the train step's adapter folder)")
    base = json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise VigosError(f"{cfg_path} names no base_model_name_or_path; pass --base")
    return base


def _probe_inputs(processor: Any) -> dict[str, Any]:
    from PIL import Image, ImageDraw

    from vigos.data.prompts import build_messages, build_prompt_text

    image = Image.new("RGB", (112, 84), (240, 240, 240))
    ImageDraw.Draw(image).rectangle((20, 20, 70, 60), fill=(200, 30, 30))
    text = build_prompt_text(processor, build_messages("What colour is the rectangle?", [image]))
    text += " a red rectangle</description><think>"
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


def _logits(model: Any, inputs: dict[str, Any]):
    import torch

    with torch.no_grad():
        return model(**inputs, use_cache=False).logits.float()


def merge(
    adapter_dir: str | Path,
    output_dir: str | Path,
    *,
    dtype: str,
    base_model: str | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
) -> MergeResult:
    import torch
    from peft import PeftModel
    from transformers import GenerationConfig

    from vigos.config import ModelConfig
    from vigos.modeling.load import load_model, processor_from

    t0 = time.perf_counter()
    adapter_dir, out = Path(adapter_dir), Path(output_dir)
    if dtype not in SCALE_TOL:
        raise VigosError(f"unsupported dtype {dtype!r}; one of {sorted(SCALE_TOL)}")
    base = base_model or adapter_base(adapter_dir)
    if base_model:
        adapter_base(adapter_dir)  # still check the adapter files
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise VigosError(f"{out} is not empty; choose an empty --output or pass --overwrite")

    model_cfg = ModelConfig(name_or_path=base, dtype=dtype)
    model = PeftModel.from_pretrained(load_model(model_cfg, device="cpu"), str(adapter_dir)).eval()
    processor_src = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else base
    processor = processor_from(processor_src)
    probe = _probe_inputs(processor)
    expected = _logits(model, probe)
    with model.disable_adapter():
        effect = float((_logits(model, probe) - expected).abs().max())
    allowed = max(SCALE_TOL[dtype] * float(expected.abs().max()), EFFECT_TOL[dtype] * effect)
    merged = model.merge_and_unload()

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.merge-", dir=out.parent))
    # the merged weights in `dtype` are what the scratch folder needs; a full disk names it, not safetensors' internals
    needed = sum(p.numel() for p in merged.parameters()) * torch.empty((), dtype=getattr(torch, dtype)).element_size()
    try:
        with disk_writes(out.parent, needed=needed):
            merged.save_pretrained(scratch, max_shard_size=max_shard_size, safe_serialization=True)
            processor.save_pretrained(scratch)
        try:
            GenerationConfig.from_pretrained(base).save_pretrained(scratch)
        except OSError:
            merged.generation_config.save_pretrained(scratch)
        del model, merged
        reloaded = load_model(ModelConfig(name_or_path=str(scratch), dtype=dtype), device="cpu")
        got = _logits(reloaded, probe)
        max_abs = float((got - expected).abs().max())
        relative = max_abs / max(float(expected.abs().max()), 1e-12)
        if not torch.isfinite(got).all() or max_abs > allowed:
            raise VigosError(
                f"merged model's logits differ from the adapter-on logits by {max_abs:.3g} (allowed {allowed:.3g}; "
                f"the adapter itself moves them by {effect:.3g}); the merge is not published"
            )
        (scratch / "vigos_merge.json").write_text(json.dumps({
            "base_model": base, "adapter": str(adapter_dir), "dtype": dtype,
            "probe_max_abs_diff": max_abs, "probe_relative_diff": relative, "probe_allowed_diff": allowed,
            "adapter_effect": effect,
        }, indent=2))
        shards = len(list(scratch.glob("*.safetensors")))
        if out.exists():
            shutil.rmtree(out)
        scratch.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return MergeResult(out, base, max_abs, relative, allowed, time.perf_counter() - t0, shards)


def cli(
    adapter: Path = typer.Option(..., "--adapter", "-a", metavar="DIR",
                                 help="LoRA adapter folder (the train step's output)."),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR",
                                help="Where the merged model goes (must be empty)."),
    base: str | None = typer.Option(None, "--base", metavar="MODEL",
                                    help="Base model (default: the adapter's base_model_name_or_path)."),
    preset: str = typer.Option("paper-7b", "--preset", metavar="NAME",
                               help="Config preset whose model.dtype is the merge dtype."),
    config: Path | None = typer.Option(None, "--config", "-c", metavar="FILE", help="YAML file of config overrides."),
    override: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                       help="Config override `section.key=value`, e.g. model.dtype=float32."),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", metavar="",
                                   help="Replace a non-empty --output."),
) -> None:
    """Merge a LoRA adapter into its base model (full safetensors), verified against the adapter's logits."""
    from vigos.config import load_config

    cfg = load_config(preset, config, override)
    r = merge(adapter, output, dtype=cfg.model.dtype, base_model=base, overwrite=overwrite)
    typer.echo(f"merged {r.base_model} + {adapter} -> {r.output_dir} ({r.shards} shard(s), {cfg.model.dtype}, "
               f"probe max |diff| {r.max_abs_diff:.3g} <= {r.allowed_diff:.3g}, {r.seconds:.1f}s)")
