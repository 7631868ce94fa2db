"""What a merged model was trained on and how its scores were made, read from the records the pipeline writes beside
them, never from the current preset (which may describe another run).

- Training: the trainer writes `vigos_train_config.json` (the run's whole `VigosConfig.to_dict()`) and
  `vigos_train_info.json` (world size, device, steps) into the adapter folder; the merge writes `vigos_merge.json`
  into the merged model, naming the adapter and the base model it was merged onto.
- Evaluation: `vigos eval run` records its settings in `<eval dir>/responses/eval_run.json` ("settings": sampling,
  seed, image budget, dtype, prefill, student prompt; `max_examples` when it is recorded there); scores.json has
  the benchmark set and, per benchmark, `n_examples`, `k` and the grader.
- Public names: a base model or dataset given as a local path has a Hub id only when its folder records one
  (the Hub cache's `models--OWNER--NAME` folder, or config.json's `_name_or_path`); otherwise the model card shows
  the folder's name, never its path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigos.errors import VigosError

MERGE_RECORD = "vigos_merge.json"
TRAIN_CONFIG = "vigos_train_config.json"
TRAIN_INFO = "vigos_train_info.json"
DEFAULT_SPLIT = "train"


@dataclass(frozen=True)
class Training:
    """The records of one training run, from its adapter folder."""

    config: dict[str, Any]
    """`VigosConfig.to_dict()` of the training run (sections `data`, `model`, `train`, `lora`, `eval`, ...)."""
    info: dict[str, Any]
    """`vigos_train_info.json`: `world_size`, `device` ("cpu" or the GPU's name), `steps`; {} when absent."""
    adapter: Path

    @property
    def config_path(self) -> Path:
        return self.adapter / TRAIN_CONFIG

    @property
    def dataset(self) -> str:
        return dataset_label(self.config.get("data") or {})

    def hardware(self) -> tuple[int, str] | None:
        """(GPUs, GPU type) the adapter was trained on ((0, "") on CPU); None when not recorded."""
        if "world_size" not in self.info or "device" not in self.info:
            return None
        device = str(self.info["device"])
        return (0, "") if device == "cpu" else (int(self.info["world_size"]), device)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VigosError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise VigosError(f"{path}: expected a JSON object")
    return data


def merge_record(model_dir: str | Path) -> dict[str, Any] | None:
    """The merged model's `vigos_merge.json` (`base_model`, `adapter`, ...), or None when it has none."""
    path = Path(model_dir) / MERGE_RECORD
    return _json(path) if path.is_file() else None


def read_training(adapter_dir: str | Path) -> Training:
    adapter = Path(adapter_dir)
    if not (adapter / TRAIN_CONFIG).is_file():
        raise VigosError(f"{adapter} has no {TRAIN_CONFIG} (the trainer writes it beside the adapter)")
    info = _json(adapter / TRAIN_INFO) if (adapter / TRAIN_INFO).is_file() else {}
    return Training(_json(adapter / TRAIN_CONFIG), info, adapter)


def find_training(model_dir: str | Path | None = None, adapter_dir: str | Path | None = None) -> Training:
    """The training records of `adapter_dir`, or of the adapter the merged model's `vigos_merge.json` names."""
    if adapter_dir is not None:
        return read_training(adapter_dir)
    record = merge_record(model_dir) if model_dir is not None else None
    if not record or not record.get("adapter"):
        raise VigosError(f"{model_dir} has no {MERGE_RECORD} naming its adapter")
    adapter = Path(record["adapter"])
    if not (adapter / TRAIN_CONFIG).is_file():
        raise VigosError(f"{model_dir}/{MERGE_RECORD} names adapter {adapter}, which has no {TRAIN_CONFIG} here")
    return read_training(adapter)


def subset_parts(data: Mapping[str, Any]) -> list[str]:
    """What narrows `data.source`: a split other than `train`, a `max_samples` cap."""
    parts = []
    if data.get("split") and data["split"] != DEFAULT_SPLIT:
        parts.append(f"split {data['split']}")
    if data.get("max_samples"):
        parts.append(f"max_samples {int(data['max_samples'])}")
    return parts


def dataset_label(data: Mapping[str, Any]) -> str:
    """The training data of a config's `data` section: `source`, plus `(split S, max_samples N)` when narrowed."""
    parts = subset_parts(data)
    return str(data.get("source") or "") + (f" ({', '.join(parts)})" if parts else "")


def is_local(name_or_path: str) -> bool:
    return (name_or_path.startswith(("/", ".", "~")) or "\\" in name_or_path or name_or_path.count("/") > 1
            or Path(name_or_path).exists())


def _valid_hub_id(name: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_id(name_or_path: str) -> str | None:
    """The Hub id of a model or dataset: the name itself when it is one; for a local folder, the id its files record
    (a Hub cache snapshot `.../models--OWNER--NAME/snapshots/<rev>`, or config.json `_name_or_path`); else None."""
    name = str(name_or_path).strip()
    if not name:
        return None
    if not is_local(name):
        return name if _valid_hub_id(name) else None
    path = Path(name).expanduser()
    for part in reversed(path.parts):  # the Hub cache's folder names the repo
        kind, sep, rest = part.partition("--")
        if sep and kind in ("models", "datasets") and "--" in rest:
            candidate = rest.replace("--", "/", 1)
            if _valid_hub_id(candidate):
                return candidate
    config = path / "config.json"
    if config.is_file():
        try:
            recorded = json.loads(config.read_text()).get("_name_or_path")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if isinstance(recorded, str) and recorded and not is_local(recorded) and _valid_hub_id(recorded):
            return recorded
    return None


def local_name(name_or_path: str) -> str:
    """A local path's last component (the card names a local folder without its path)."""
    return Path(str(name_or_path).rstrip("/\\")).name or str(name_or_path)


def eval_settings(eval_dir: str | Path) -> dict[str, Any]:
    """The settings `vigos eval run` recorded for an eval folder (`responses/eval_run.json` "settings"); {} when
    there is no record."""
    from vigos.evaluation.run import RESPONSES_DIR
    from vigos.evaluation.score import generation_settings

    return dict(generation_settings(Path(eval_dir) / RESPONSES_DIR))


def subset_cap(scores: Mapping[str, Any], settings: Mapping[str, Any]) -> int | None:
    """The examples-per-benchmark cap the evaluation ran with, when it cut a benchmark short: `max_examples` of the
    eval settings, if some benchmark's scored `n_examples` reached it (a cap above every benchmark's size cut
    nothing). None: every benchmark was evaluated whole, or no cap is recorded."""
    cap = settings.get("max_examples")
    if not cap:
        return None
    from vigos.evaluation.metrics import score_rows

    counts = [row.get("n_examples") for _, row in score_rows(scores)]
    counts = [int(n) for n in counts if isinstance(n, int | float)]
    return int(cap) if not counts or max(counts) >= int(cap) else None
