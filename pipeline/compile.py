"""Compile the DAG to KFP v2 YAML and check it with KFP's own loader."""

from __future__ import annotations

from pathlib import Path


def compile_pipeline(output: str | Path) -> Path:
    from kfp import compiler
    from kfp.components import load_component_from_file

    from pipeline.pipeline import vigos_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp.yaml")
    compiler.Compiler().compile(vigos_pipeline, package_path=str(tmp))
    load_component_from_file(str(tmp))  # KFP's loader must read back what its compiler wrote
    tmp.replace(output)
    return output
