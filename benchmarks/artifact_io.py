"""Bytes moved through KFP's object store per pipeline run: large data as artifacts (before) vs by reference (now).

    .venv/bin/python benchmarks/artifact_io.py [--json out.json]

Counted from the compiled pipeline spec: every artifact a step outputs is uploaded once, and downloaded once by
each step that takes it as an input. Sizes at the paper's scale (Qwen2.5-VL-7B):
- before: the data itself: merged model 15.2 GB (bf16 weights), the Hub staging folder another copy of it, the
  LoRA r64 adapter (161.5 M parameters, 7 modules x 28 layers, in bf16), the prepared Vision-SR1-47K
  (`--dataset-gb`, default 5), each evaluation's folder (`--eval-gb`, default 0.2: ~10k questions x 5 samples x
  ~1k tokens of text, plus grades);
- now: the manifests `vigos.volume` writes instead, measured by writing them for folders with the 7B run's file
  layout (names and counts; 80 bytes per file added for the sha256 the real manifests carry), plus the small
  artifacts that stay (metrics, Markdown cards, the report page, the upload manifest): `--small-kb` each.
If a demo run is on disk (`make demo`: `$VIGOS_HOME/kfp-runs`), its measured artifact bytes are printed too.
Goal (issue 10): under 100 MB per run through the object store.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vigos import volume  # noqa: E402

GB = 1e9
LORA_7B_PARAMS = 28 * 64 * (2 * 3584 + 2 * (3584 + 512) + 2 * 3584 + 3 * (3584 + 18944))  # q,k,v,o,gate,up,down
MERGED_7B_BYTES = 15.2 * GB
# File layouts of the 7B run's large outputs (what a manifest lists).
LAYOUTS = {
    "merged_model": [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
    + ["model.safetensors.index.json", "config.json", "generation_config.json", "tokenizer.json",
       "tokenizer_config.json", "vocab.json", "merges.txt", "preprocessor_config.json", "chat_template.jinja",
       "vigos_merge.json"],
    "adapter": ["adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                "vocab.json", "merges.txt", "preprocessor_config.json", "chat_template.jinja",
                "vigos_train_config.json", "vigos_train_info.json", "README.md"],
    "dataset": [f"data-{i:05d}-of-00012.arrow" for i in range(12)] + ["dataset_info.json", "state.json",
                                                                        "stats.json", "dropped.jsonl"],
    "evaluation": [f"{d}/{b}.jsonl" for d in ("responses", "grades") for b in
                   ("mm-vet", "mmmu", "mmmu-pro", "mathverse", "mathvista", "mmsi", "realworldqa", "cv-bench",
                    "vilp-f", "vilp-p")] + ["scores.json", "eval_run.json", "report/eval_report.md",
                                            "report/eval_report.html", "report/eval_chart.png"],
    "hub_folder": [f"upload/model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
    + [f"upload/{f}" for f in ("model.safetensors.index.json", "config.json", "generation_config.json",
                               "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                               "preprocessor_config.json", "chat_template.jinja", "README.md")],
}


def edges(spec: dict[str, Any]) -> tuple[Counter, Counter]:
    """(uploads, downloads) per output artifact name, from the compiled spec's task graph."""
    uploads: Counter = Counter()
    downloads: Counter = Counter()
    for comp in spec["components"].values():
        for name in (comp.get("outputDefinitions") or {}).get("artifacts", {}):
            if "dag" not in comp:
                uploads[name] += 1
    for comp in [spec["root"], *spec["components"].values()]:
        for task in (comp.get("dag") or {}).get("tasks", {}).values():
            for inp in (task.get("inputs") or {}).get("artifacts", {}).values():
                if "taskOutputArtifact" in inp:
                    downloads[inp["taskOutputArtifact"]["outputArtifactKey"]] += 1
    return uploads, downloads


def manifest_bytes(files: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        for f in files:
            (folder / f).parent.mkdir(parents=True, exist_ok=True)
            (folder / f).touch()
        volume.write_manifest(Path(tmp) / "art", folder, "estimate", hashes=False)
        return (Path(tmp) / "art" / volume.MANIFEST).stat().st_size + 80 * len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset-gb", type=float, default=5.0)
    ap.add_argument("--eval-gb", type=float, default=0.2)
    ap.add_argument("--small-kb", type=float, default=64.0, help="a metrics / Markdown / report artifact")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import yaml
    from kfp import compiler

    from pipeline.pipeline import vigos_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        compiler.Compiler().compile(vigos_pipeline, package_path=f"{tmp}/p.yaml")
        spec = next(yaml.safe_load_all(Path(f"{tmp}/p.yaml").read_text()))
    uploads, downloads = edges(spec)
    before_size = {"merged_model": MERGED_7B_BYTES, "hub_folder": MERGED_7B_BYTES, "adapter": LORA_7B_PARAMS * 2,
                   "dataset": args.dataset_gb * GB, "evaluation": args.eval_gb * GB}
    after_size = {name: manifest_bytes(files) for name, files in LAYOUTS.items()}
    small = args.small_kb * 1e3
    rows = []
    for name in sorted(set(uploads) | set(downloads)):
        moves = uploads[name] + downloads[name]
        before = before_size.get(name, small)
        after = after_size.get(name, small)
        rows.append({"artifact": name, "uploads": uploads[name], "downloads": downloads[name],
                     "before_bytes": moves * before, "after_bytes": moves * after})
    total_before = sum(r["before_bytes"] for r in rows)
    total_after = sum(r["after_bytes"] for r in rows)
    print(f"{'artifact':<14} {'up':>3} {'down':>4} {'before':>12} {'now':>12}")
    for r in rows:
        print(f"{r['artifact']:<14} {r['uploads']:>3} {r['downloads']:>4} {r['before_bytes'] / GB:>9.3f} GB "
              f"{r['after_bytes'] / 1e6:>9.3f} MB")
    print(f"{'total':<23} {total_before / GB:>9.2f} GB {total_after / 1e6:>9.3f} MB  "
          f"({total_before / total_after:,.0f}x less; goal < 100 MB: {'met' if total_after < 100e6 else 'NOT met'})")
    from vigos.tracking import vigos_home

    demo_runs = sorted((vigos_home() / "kfp-runs").glob("vigos-*"))
    demo = sum(p.stat().st_size for p in demo_runs[-1].rglob("*") if p.is_file()) if demo_runs else None
    if demo is not None:
        print(f"the last demo run's KFP artifacts on disk: {demo / 1e3:.1f} kB ({demo_runs[-1]})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "total_before_bytes": total_before,
                                         "total_after_bytes": total_after, "demo_artifact_bytes": demo}, indent=2))


if __name__ == "__main__":
    main()
