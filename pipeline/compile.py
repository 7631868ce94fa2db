"""Compile the DAG to KFP v2 YAML and check it with KFP's own loader."""

from __future__ import annotations

from pathlib import Path


def compile_pipeline(output: str | Path, base_eval_alongside: bool = False) -> Path:
    """The cluster pipeline as YAML; `base_eval_alongside`: the variant that evaluates the base model beside
    training (for a GPU quota with room for both)."""
    from kfp import compiler
    from kfp.components import load_component_from_file

    from pipeline.pipeline import build_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp.yaml")
    compiler.Compiler().compile(build_pipeline(base_eval_alongside=base_eval_alongside), package_path=str(tmp))
    load_component_from_file(str(tmp))  # KFP's loader must read back what its compiler wrote
    tmp.replace(output)
    return output
