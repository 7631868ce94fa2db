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
    assert set(inner) == {"prepare-data", "record-data-stats", "train", "merge", "evaluate-base", "evaluate-model",
                          "eval-report", "register", "publish-hub"}
    # the run id reaches the steps as KFP's job-id placeholder, so every step finds the same MLflow parent run...
    stats = inner["record-data-stats"]
    assert stats.inputs.parameters["kfp_run_id"].runtime_value.constant.string_value == "{{$.pipeline_job_uuid}}"
    # ... except data prep, which must stay cacheable: no run id among its inputs, caching on
    prep = inner["prepare-data"]
    assert "kfp_run_id" not in prep.inputs.parameters and prep.caching_options.enable_cache
    assert prep.task_info.name == "data prep"
    for name in set(inner) - {"prepare-data"}:
        assert not inner[name].caching_options.enable_cache, name
    # the DAG: prep -> train -> merge -> evaluate model -> report; the base model is evaluated from the start
    assert list(inner["train"].dependent_tasks) == ["prepare-data"]
    assert list(inner["merge"].dependent_tasks) == ["train"]
    assert list(inner["evaluate-model"].dependent_tasks) == ["merge"]
    assert not inner["evaluate-base"].dependent_tasks
    assert sorted(inner["eval-report"].dependent_tasks) == ["evaluate-base", "evaluate-model"]
    assert sorted(inner["register"].dependent_tasks) == ["evaluate-model", "merge"]
    assert sorted(inner["publish-hub"].dependent_tasks) == ["evaluate-base", "evaluate-model", "merge", "train"]


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


def _docs(tmp_path):
    path = compile_pipeline(tmp_path / "vigos.yaml")
    spec, platform = list(yaml.safe_load_all(path.read_text()))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_gpu_steps_are_scheduled_on_the_gpu_pool(tmp_path):
    spec, k8s = _docs(tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["train_gpus"]["defaultValue"] == 8 and params["eval_gpus"]["defaultValue"] == 8
    assert params["gpu_node_selector"]["defaultValue"] == {"vigos.dev/gpu-pool": "a100"}
    assert params["gpu_tolerations"]["defaultValue"][0]["key"] == "nvidia.com/gpu"
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    for task, gpus in (("train", "train_gpus"), ("evaluate-base", "eval_gpus"), ("evaluate-model", "eval_gpus")):
        ex = f"exec-{task}"
        acc = executors[ex]["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu"
        assert acc["resourceCount"] == f"{{{{$.inputs.parameters['pipelinechannel--{gpus}']}}}}"
        conf = k8s[ex]
        assert conf["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "pipelinechannel--gpu_node_selector"
        assert conf["tolerations"][0]["tolerationJson"]["componentInputParameter"] == "pipelinechannel--gpu_tolerations"
        shm = conf["emptyDirMounts"][0]
        assert (shm["mountPath"], shm["medium"]) == ("/dev/shm", "Memory")
        secrets = {s["secretName"]: s for s in conf["secretAsEnv"]}
        assert secrets["vigos-hf-token"]["keyToEnv"] == [{"secretKey": "token", "envVar": "HF_TOKEN"}]
        retry = inner[task]["retryPolicy"]
        assert retry["maxRetryCount"] == 2 and retry["backoffDuration"] == "120s"
    assert "resources" not in executors["exec-prepare-data"]["container"] or \
        "accelerator" not in executors["exec-prepare-data"]["container"]["resources"]


def test_every_step_gets_the_cluster_wiring(tmp_path):
    spec, k8s = _docs(tmp_path)
    for ex in spec["deploymentSpec"]["executors"]:
        conf = k8s[ex]
        assert conf["pvcMount"][0]["mountPath"] == "/mnt/vigos", ex
        cms = {c["configMapName"]: c for c in conf["configMapAsEnv"]}
        assert cms["vigos-mlflow"]["keyToEnv"] == [{"configMapKey": "tracking_uri", "envVar": "MLFLOW_TRACKING_URI"}]
    # secrets only ever come from Kubernetes Secrets: no parameter carries a token or a password
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if any(w in p.lower() for w in ("token", "password", "secret", "api_key"))]
