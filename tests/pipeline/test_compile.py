"""The compiled YAML, read back with KFP's own loaders."""

import yaml
from kfp.components import load_component_from_file

from components.images import CPU_IMAGE, EVAL_IMAGE, GPU_IMAGE
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
    tasks = _all_tasks(spec)
    assert set(tasks) == {"prepare-data", "record-data-stats", "train", "train-on-nodes", "merge", "evaluate-base",
                          "evaluate-model", "eval-report", "register", "publish-hub", "finalize-run",
                          "exit-handler-1", "condition-branches-2", "condition-3", "condition-4"}
    # the run id reaches the steps as KFP's job-id placeholder, so every step finds the same MLflow parent run...
    stats = inner["record-data-stats"]
    assert stats.inputs.parameters["kfp_run_id"].runtime_value.constant.string_value == "{{$.pipeline_job_uuid}}"
    # ... except data prep, which must stay cacheable: no run id among its inputs, caching on
    prep = inner["prepare-data"]
    assert "kfp_run_id" not in prep.inputs.parameters and prep.caching_options.enable_cache
    assert prep.task_info.name == "data prep"
    for name, task in tasks.items():
        if name != "prepare-data" and task.component_ref.name.startswith("comp-") and task.HasField("caching_options"):
            assert not task.caching_options.enable_cache, name
    # the DAG: prep -> train (one node, or several through Kubeflow Trainer) -> merge -> evaluate model -> report;
    # the base model after the merge (never competing with training for the GPU quota)
    assert list(inner["condition-branches-2"].dependent_tasks) == ["prepare-data"]
    conditions = {tasks[n].trigger_policy.condition for n in ("condition-3", "condition-4")}
    assert conditions == {"int(inputs.parameter_values['pipelinechannel--train_nodes']) == 1",
                          "!(int(inputs.parameter_values['pipelinechannel--train_nodes']) == 1)"}
    assert list(inner["merge"].dependent_tasks) == ["condition-branches-2"]
    assert list(inner["evaluate-model"].dependent_tasks) == ["merge"]
    assert list(inner["evaluate-base"].dependent_tasks) == ["merge"]
    assert sorted(inner["eval-report"].dependent_tasks) == ["evaluate-base", "evaluate-model"]
    assert sorted(inner["register"].dependent_tasks) == ["evaluate-model", "merge"]
    assert sorted(inner["publish-hub"].dependent_tasks) == ["condition-branches-2", "evaluate-base",
                                                            "evaluate-model", "merge"]


def _all_tasks(spec):
    return {name: task for comp in [spec.root, *spec.components.values()] if comp.HasField("dag")
            for name, task in comp.dag.tasks.items()}


def test_the_local_variant_has_no_several_nodes_branch(tmp_path):
    from kfp import compiler

    from pipeline.pipeline import build_pipeline

    path = tmp_path / "local.yaml"
    compiler.Compiler().compile(build_pipeline(multi_node=False), package_path=str(path))
    inner = load_component_from_file(str(path)).pipeline_spec.components["comp-exit-handler-1"].dag.tasks
    assert "train" in inner and "train-on-nodes" not in str(inner)
    assert list(inner["merge"].dependent_tasks) == ["train"]


def test_base_evaluation_beside_training_is_a_compile_time_choice(tmp_path):
    from kfp import compiler

    from pipeline.pipeline import build_pipeline

    path = tmp_path / "alongside.yaml"
    compiler.Compiler().compile(build_pipeline(base_eval_alongside=True), package_path=str(path))
    inner = load_component_from_file(str(path)).pipeline_spec.components["comp-exit-handler-1"].dag.tasks
    assert not inner["evaluate-base"].dependent_tasks


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
        # the evaluation steps run on the vLLM image (docker/vllm.Dockerfile), training on the project's torch
        assert image == (EVAL_IMAGE if name in ("exec-evaluate-model", "exec-evaluate-base") else
                         GPU_IMAGE if name in ("exec-train",) else image), (name, image)
        assert image in (CPU_IMAGE, GPU_IMAGE, EVAL_IMAGE), (name, image)
        # images carry kfp and the project: no pip install at pod start
        assert "pip install" not in " ".join(ex["container"]["command"]), name


def test_eval_backend_parameter_reaches_both_evaluation_steps(tmp_path):
    path = compile_pipeline(tmp_path / "vigos.yaml")
    doc = next(yaml.safe_load_all(path.read_text()))
    param = doc["root"]["inputDefinitions"]["parameters"]["eval_backend"]
    assert param["defaultValue"] == "" and "paper-7b: vllm" in param["description"]  # the preset decides
    dag = doc["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    for step in ("evaluate-model", "evaluate-base"):
        inputs = dag[step]["inputs"]["parameters"]
        assert inputs["backend"]["componentInputParameter"] == "pipelinechannel--eval_backend", step


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
    inner = {n: t for c in spec["components"].values() if "dag" in c for n, t in c["dag"]["tasks"].items()}
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
        assert {"name": "NODE_NAME", "fieldPath": "spec.nodeName"} in conf["fieldPathAsEnv"]  # named in GPU errors
        retry = inner[task]["retryPolicy"]
        assert retry["maxRetryCount"] == 2 and retry["backoffDuration"] == "120s"
        # Argo counts the max duration from the first attempt: it must outlast all of them, or no retry happens
        assert int(retry["backoffMaxDuration"].rstrip("s")) >= 3 * int(k8s[ex]["activeDeadlineSeconds"])
    assert "resources" not in executors["exec-prepare-data"]["container"] or \
        "accelerator" not in executors["exec-prepare-data"]["container"]["resources"]


def test_several_nodes_go_through_a_cpu_launcher_pod(tmp_path):
    spec, k8s = _docs(tmp_path)
    ex = spec["deploymentSpec"]["executors"]["exec-train-on-nodes"]["container"]
    assert ex["image"] == CPU_IMAGE and "accelerator" not in ex.get("resources", {})  # the TrainJob's pods get GPUs
    inputs = spec["components"]["comp-condition-4"]["dag"]["tasks"]["train-on-nodes"]["inputs"]["parameters"]
    assert inputs["image"]["runtimeValue"]["constant"] == GPU_IMAGE
    assert inputs["node_selector"]["componentInputParameter"] == "pipelinechannel--gpu_node_selector"
    assert inputs["nodes"]["componentInputParameter"] == "pipelinechannel--train_nodes"


def test_every_step_gets_the_cluster_wiring(tmp_path):
    spec, k8s = _docs(tmp_path)
    for ex in spec["deploymentSpec"]["executors"]:
        conf = k8s[ex]
        assert conf["pvcMount"][0]["mountPath"] == "/mnt/vigos", ex
        # every pod has a deadline: nothing holds its node (or 8 GPUs) forever
        assert 0 < int(conf["activeDeadlineSeconds"]) <= 14 * 24 * 3600, ex
        cms = {c["configMapName"]: c for c in conf["configMapAsEnv"]}
        assert cms["vigos-mlflow"]["keyToEnv"] == [{"configMapKey": "tracking_uri", "envVar": "MLFLOW_TRACKING_URI"}]
    # secrets only ever come from Kubernetes Secrets: no parameter carries a token or a password
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if any(w in p.lower() for w in ("token", "password", "secret", "api_key"))]
