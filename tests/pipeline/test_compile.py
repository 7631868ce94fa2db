"""The compiled YAML, read back with KFP's own loaders."""

import yaml
from kfp.components import load_component_from_file

from components.images import CPU_IMAGE, GPU_IMAGE
from pipeline.compile import compile_pipeline


def test_compiles_and_loads_back(tmp_path):
    path = compile_pipeline(tmp_path / "vigos.yaml")
    component = load_component_from_file(str(path))
    spec = component.pipeline_spec
    assert spec.pipeline_info.name == "vigos"
    root_tasks = spec.root.dag.tasks
    assert set(root_tasks) == {"exit-handler-1", "finalize-run"}
    # the exit handler runs after everything, whatever happened
    assert root_tasks["finalize-run"].trigger_policy.strategy == 2  # ALL_UPSTREAM_TASKS_COMPLETED
    inner = spec.components["comp-exit-handler-1"].dag.tasks
    assert "prepare-data" in inner
    prep = inner["prepare-data"]
    # the run id reaches the step as KFP's job-id placeholder, so every step finds the same MLflow parent run
    assert prep.inputs.parameters["kfp_run_id"].runtime_value.constant.string_value == "{{$.pipeline_job_uuid}}"
    assert prep.task_info.name == "data prep"


def test_every_parameter_has_a_default_and_a_description(tmp_path):
    path = compile_pipeline(tmp_path / "vigos.yaml")
    doc = next(yaml.safe_load_all(path.read_text()))
    params = doc["root"]["inputDefinitions"]["parameters"]
    assert {"preset", "dataset_source", "dataset_split", "max_samples", "mlflow_experiment",
            "config_overrides"} <= set(params)
    for name, p in params.items():
        assert p.get("isOptional") and "defaultValue" in p, name
        assert p.get("description"), name


def test_components_use_explicit_images(tmp_path):
    path = compile_pipeline(tmp_path / "vigos.yaml")
    doc = next(yaml.safe_load_all(path.read_text()))
    for name, ex in doc["deploymentSpec"]["executors"].items():
        image = ex["container"]["image"]
        assert image in (CPU_IMAGE, GPU_IMAGE), (name, image)
        # images carry kfp and the project: no pip install at pod start
        assert "pip install" not in " ".join(ex["container"]["command"]), name
