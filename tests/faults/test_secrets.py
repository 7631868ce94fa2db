"""Security faults: no secret reaches a log, MLflow (params, tags, artifacts, the server's own store on disk), the
compiled pipeline or an error message; model loading never runs code shipped inside a model repository.

Every secret the project handles is set to a distinctive sentinel value (the environment variables the cluster fills
from Secrets, and a password in a URL), then the real things a user runs are run and every output searched. The
servers that misbehave are local: `_quoting_server` answers every request with an error whose body quotes the
credential it was sent (as some proxies and API servers do), so an error message that passes a server's reply on
is caught deterministically.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vigos import steps
from vigos.config import ConfigError, load_config
from vigos.errors import VigosError

ROOT = Path(__file__).resolve().parents[2]
SENTINELS = {
    "HF_TOKEN": "hf_SENTINELhubtoken0001",
    "HUGGING_FACE_HUB_TOKEN": "hf_SENTINELhubtoken0002",
    "VIGOS_JUDGE_API_KEY": "sk-SENTINELjudgekey0003",
    "OTHER_JUDGE_API_KEY": "sk-SENTINELjudgekey0004",  # a judge key variable named by a config
    "MLFLOW_TRACKING_USERNAME": "SENTINELmlflowuser0005",
    "MLFLOW_TRACKING_PASSWORD": "SENTINELmlflowpass0006",
    "KF_PIPELINES_TOKEN": "SENTINELkfptoken0007",
    "PGPASSWORD": "SENTINELpostgres0008",
    "POSTGRES_PASSWORD": "SENTINELpostgres0009",
    "AWS_SECRET_ACCESS_KEY": "SENTINELawssecret0010",
}
URL_PASSWORD = "SENTINELurlpassword0011"
"""A password in a URL's user info (`http://user:PASSWORD@host`)."""
ALL = [*SENTINELS.values(), URL_PASSWORD]


def _assert_clean(what: str, text: str | bytes) -> None:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    found = [s for s in ALL if s.encode() in data]
    assert not found, f"{what} holds secret(s) {found}"


def _assert_tree_clean(root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        _assert_clean(str(path), path.read_bytes())


@pytest.fixture
def secrets_env(monkeypatch):
    for name, value in SENTINELS.items():
        monkeypatch.setenv(name, value)
    return SENTINELS


@contextmanager
def _quoting_server():
    """A local server that answers every request 500, its JSON body quoting the request's credential."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            quoted = self.headers.get("Authorization") or self.headers.get("Cookie") or "none"
            message = f"invalid credentials {quoted!r}"
            body = json.dumps({"error": {"message": message}, "message": message}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_pipeline_steps_leak_no_secret(secrets_env, tracking_env, mlflow_store, tiny_model_dir, tmp_path,
                                          monkeypatch, capfd):
    """The DAG's steps on the CPU path (data prep, stats, train, merge, evaluate with a judge configured, report,
    registry, a Hub upload refused by a quoting server, the final status with an error that names a URL with a
    password), logging into a real MLflow server with credentials set: no sentinel in their output, in MLflow's
    params/tags/artifacts (API and the server's files), or in anything they wrote."""
    import huggingface_hub.constants
    from mlflow import MlflowClient

    from vigos.data.synthetic import write_synthetic
    from vigos.evaluation.fixtures import write_benchmark_fixtures

    name = f"vigos-secrets-{uuid.uuid4().hex[:8]}"  # the session's server is shared
    work = tmp_path / "work"
    data = write_synthetic(work / "data", n=4, seed=0, fmt="parquet")
    sources = write_benchmark_fixtures(work / "benchmarks", ["mm-vet"], n=2, seed=0)
    with _quoting_server() as server:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server)
        overrides = [f"model.name_or_path={tiny_model_dir}", "train.max_steps=1", "train.global_batch_size=1",
                     "train.max_completion_length=8", "eval.n_samples=1", "eval.max_new_tokens=8",
                     f"eval.judge_base_url={server}/v1", "eval.judge_model=judge", "eval.judge_max_retries=0",
                     "eval.judge_api_key_env=OTHER_JUDGE_API_KEY", f"publish.registered_model={name}"]
        ctx = steps.StepContext("tiny", overrides, name, "kfp-secrets-1")
        vol = str(work / "volume")
        steps.prepare_data(ctx, str(work / "prep"), dataset_source=str(data))
        steps.record_data_stats(ctx, str(work / "prep"))
        steps.train(ctx, str(work / "prep"), str(work / "adapter"), volume_root=vol)
        steps.merge(ctx, str(work / "adapter"), str(work / "merged"), volume_root=vol)
        steps.evaluate(ctx, str(work / "merged"), str(work / "eval"), "model", benchmarks=["mm-vet"],
                       sources=sources, volume_root=vol)
        steps.eval_report(ctx, str(work / "eval"), str(work / "eval"), str(work / "report.html"))
        steps.register(ctx, str(work / "merged"), str(work / "eval"))
        with pytest.raises(SystemExit):  # the Hub refuses: one line, naming no token
            steps.publish_hub(ctx, str(work / "merged"), str(work / "adapter"), str(work / "eval"),
                              str(work / "eval"), str(work / "hub"), repo_id="org/vigos-secrets", volume_root=vol)
    failure = f"step train failed: cannot read http://reader:{URL_PASSWORD}@data.example.com/rows.parquet"
    steps.finalize_run(ctx, "FAILED", error_message=failure)

    out = capfd.readouterr()
    assert "could not create the repo for org/vigos-secrets" in out.err  # the refused upload was reached
    _assert_clean("the steps' stdout", out.out)
    _assert_clean("the steps' stderr", out.err)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 8  # the parent and every step
    for run in runs:  # through the API: params, tags, artifact names (their bytes: the store on disk, below)
        paths = _artifact_paths(client, run.info.run_id)
        _assert_clean(f"run {run.info.run_name}", json.dumps([run.data.params, run.data.tags, paths]))
    for version in client.search_model_versions(f"name='{name}'"):
        _assert_clean(f"model version {version.version}", json.dumps(version.tags))
    parent = next(r for r in runs if r.data.tags.get("kfp.error"))
    assert "http://reader:***@data.example.com" in parent.data.tags["kfp.error"]
    assert list(mlflow_store.rglob("scores.json")) and list(mlflow_store.glob("*.db"))  # the store is this one
    _assert_tree_clean(mlflow_store)  # the server's database and artifact store
    _assert_tree_clean(work)  # everything the steps wrote: volume, manifests, staging, report


def _artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_a_judge_reply_quoting_the_key_is_not_logged(secrets_env, caplog):
    """An OpenAI-compatible judge that answers 500 quoting the API key it got: the retry warnings say what failed,
    never the key."""
    from vigos.evaluation.judge import Judge

    cfg = load_config("tiny", overrides=["eval.judge_model=judge", "eval.judge_max_retries=1",
                                         "eval.judge_api_key_env=OTHER_JUDGE_API_KEY"]).eval
    with _quoting_server() as server:
        cfg.judge_base_url = f"{server}/v1"
        judge = Judge(cfg, cache_dir=None, sleep=lambda s: None)
        with caplog.at_level("WARNING"):
            assert judge.verdicts("What is 2+2?", ["4"], "4") is None  # failed: the rule grade stays
    assert judge.http_calls == 2 and "InternalServerError" in caplog.text
    _assert_clean("the judge's warnings", caplog.text)


def test_compile_and_a_refused_submit_leak_no_secret(secrets_env, tmp_path):
    """`python -m pipeline submit` compiles (build/vigos-pipeline.yaml) and then meets a KFP endpoint that answers
    500 quoting the bearer token: its one error line and the compiled pipeline hold no secret."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with _quoting_server() as server:
        env["KF_PIPELINES_ENDPOINT"] = server
        result = subprocess.run([sys.executable, "-m", "pipeline", "submit", "--allow-unpinned-images"], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"Kubeflow Pipelines at {server} answered 500" in result.stderr
    _assert_clean("the submit's output", result.stdout + result.stderr)
    compiled = tmp_path / "build" / "vigos-pipeline.yaml"
    assert compiled.is_file() and "vigos-mlflow-credentials" in compiled.read_text()  # Secrets by name only
    _assert_clean(str(compiled), compiled.read_bytes())


def test_a_url_with_a_password_is_refused_without_echoing_it(monkeypatch):
    """A config URL or MLFLOW_TRACKING_URI with a password would be logged (MLflow params, `View run at ...` lines):
    refused, with one line naming the setting and the fix, the password masked."""
    url = f"http://judge:{URL_PASSWORD}@judge.example.com/v1"
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides=[f"eval.judge_base_url={url}"])
    assert "eval.judge_base_url" in str(e.value) and "http://judge:***@judge.example.com/v1" in str(e.value)
    _assert_clean("the config error", str(e.value))
    from vigos.tracking import tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://pipeline:{URL_PASSWORD}@mlflow.example.com")
    with pytest.raises(VigosError) as e:
        tracking_uri()
    assert "MLFLOW_TRACKING_USERNAME" in str(e.value) and "https://pipeline:***@mlflow.example.com" in str(e.value)
    _assert_clean("the tracking error", str(e.value))


def test_a_config_names_secret_variables_never_holds_their_value():
    """`*_env` fields name an environment variable; a key pasted there instead would be logged as a param."""
    with pytest.raises(ConfigError, match="eval.judge_api_key_env .* not an environment variable name"):
        load_config("tiny", overrides=["eval.judge_api_key_env=sk-proj-abc.def"])


def test_redact_masks_secret_variables_and_url_passwords(monkeypatch):
    from vigos.redact import redact

    monkeypatch.setenv("MY_SERVICE_API_KEY", "k3y-long-enough")
    monkeypatch.setenv("SHORT_TOKEN", "none")  # a placeholder: masking it everywhere would mangle text
    text = "key k3y-long-enough at https://bob:hunter22@host:8443/x, ssh://git@github.com, none left"
    assert redact(text) == "key *** at https://bob:***@host:8443/x, ssh://git@github.com, none left"


# -- remote code -------------------------------------------------------------------------------------------------

def test_model_loading_never_trusts_remote_code(tiny_model_dir, monkeypatch):
    """The loaders pass trust_remote_code=False to transformers, whatever the repository asks for."""
    import transformers

    from vigos.config import ModelConfig
    from vigos.modeling import load

    seen = []
    for cls in (transformers.AutoProcessor, transformers.Qwen2_5_VLForConditionalGeneration):
        real = cls.from_pretrained.__func__

        def spy(klass, source, *args, _real=real, **kwargs):
            seen.append((klass.__name__, kwargs.get("trust_remote_code", "unset")))
            return _real(klass, source, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32")
    load.load_processor(cfg)
    load.load_model(cfg)
    assert seen == [("AutoProcessor", False), ("Qwen2_5_VLForConditionalGeneration", False)]


# Loaders that read only JSON and safetensors (no code to trust): PEFT's adapter, a generation config.
_NO_CODE_LOADERS = {"PeftModel", "GenerationConfig"}


def test_no_module_loads_a_model_or_processor_around_the_one_home():
    """Every `from_pretrained` in the package is in vigos/modeling/load.py and passes trust_remote_code=False."""
    stray = []
    for path in sorted((ROOT / "vigos").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained"):
                continue
            owner = ast.unparse(node.func.value)
            if owner in _NO_CODE_LOADERS:
                continue
            flag = next((k.value for k in node.keywords if k.arg == "trust_remote_code"), None)
            where = f"{path.relative_to(ROOT)}:{node.lineno} {owner}.from_pretrained"
            if path.relative_to(ROOT).as_posix() != "vigos/modeling/load.py":
                stray.append(f"{where} (load through vigos.modeling.load)")
            elif not (isinstance(flag, ast.Constant) and flag.value is False):
                stray.append(f"{where} without trust_remote_code=False")
    assert not stray, stray
