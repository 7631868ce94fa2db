"""Hub upload: the staged folder, its manifest, the token handling, and the calls made to the Hub.

There is no network here, so uploads go to `FakeHfApi`, a TEST DOUBLE monkeypatched over `huggingface_hub.HfApi`:
it records `create_repo` / `repo_info` / `update_repo_settings` / `upload_folder` calls and a snapshot of the folder
at upload time. It checks the arguments the real API takes (keyword-only `folder_path`, `repo_type`...), not the Hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from vigos.errors import VigosError
from vigos.publish.hub import MANIFEST, publish_to_hub

TOKEN = "hf_TESTsecretTOKEN123"  # noqa: S105 - a fake value; the tests check it never lands anywhere
CARD = "---\nlicense: apache-2.0\n---\n\n# Test card\n"
MODEL_FILES = {
    "config.json": b'{"model_type": "qwen2_5_vl"}',
    "generation_config.json": b"{}",
    "model-00001-of-00002.safetensors": b"\x01" * 1000,
    "model-00002-of-00002.safetensors": b"\x02" * 500,
    "model.safetensors.index.json": b'{"weight_map": {}}',
    "tokenizer.json": b"{}",
    "preprocessor_config.json": b"{}",
    "chat_template.jinja": b"{{ messages }}",
}
LEFT_OUT = {
    "vigos_merge.json": b'{"adapter": "/pvc/run-1/adapter"}',
    "README.md": b"# stale readme",
    ".cache/huggingface/x.lock": b"",
    "training_args.bin": b"pickle",
}


class FakeHfApi:
    """Records what would be sent to the Hub; `existing` simulates a repo that is already there."""

    calls: list[tuple[str, dict]] = []
    existing: dict[str, bool] = {}  # repo id -> private
    fail_with: Exception | None = None

    def __init__(self, token=None, **kwargs):
        FakeHfApi.calls.append(("__init__", {"token": token, **kwargs}))

    def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None, **kwargs):
        FakeHfApi.calls.append(("create_repo", {"repo_id": repo_id, "private": private, "exist_ok": exist_ok,
                                                "repo_type": repo_type}))
        if FakeHfApi.fail_with is not None:
            raise FakeHfApi.fail_with
        FakeHfApi.existing.setdefault(repo_id, bool(private))
        return f"https://huggingface.co/{repo_id}"

    def repo_info(self, repo_id, *, repo_type=None, **kwargs):
        return SimpleNamespace(id=repo_id, private=FakeHfApi.existing[repo_id])

    def update_repo_settings(self, repo_id, *, private=None, repo_type=None, **kwargs):
        FakeHfApi.calls.append(("update_repo_settings", {"repo_id": repo_id, "private": private}))
        FakeHfApi.existing[repo_id] = private

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, commit_message=None, **kwargs):
        folder = Path(folder_path)
        snapshot = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        FakeHfApi.calls.append(("upload_folder", {"repo_id": repo_id, "folder_path": str(folder),
                                                  "repo_type": repo_type, "files": snapshot}))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls, FakeHfApi.existing, FakeHfApi.fail_with = [], {}, None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


@pytest.fixture
def model_dir(tmp_path) -> Path:
    root = tmp_path / "merged"
    for rel, data in {**MODEL_FILES, **LEFT_OUT}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def publish(model_dir, staging, **kw):
    args = dict(repo_id="someone/ViGOS-7B", private=True, card_text=CARD, token_env="VIGOS_TEST_HF_TOKEN",
                dry_run=False, staging_dir=staging)
    args.update(kw)
    return publish_to_hub(model_dir, **args)


def calls(name: str) -> list[dict]:
    return [kw for n, kw in FakeHfApi.calls if n == name]


def test_dry_run_stages_the_exact_folder_and_manifest(model_dir, tmp_path, fake_hub, monkeypatch):
    monkeypatch.delenv("VIGOS_TEST_HF_TOKEN", raising=False)  # a dry run needs no token
    r = publish(model_dir, tmp_path / "staging", dry_run=True)
    expected = sorted([*MODEL_FILES, "README.md"])
    assert r.dry_run and r.url is None and r.files == expected
    staged = {p.relative_to(r.folder).as_posix() for p in r.folder.rglob("*") if p.is_file()}
    assert sorted(staged) == expected  # vigos_merge.json, hidden files, pickles and the old README stay behind
    assert (r.folder / "README.md").read_text() == CARD
    assert (r.folder / "config.json").read_bytes() == MODEL_FILES["config.json"]
    manifest = json.loads((tmp_path / "staging" / MANIFEST).read_text())
    assert r.manifest == tmp_path / "staging" / MANIFEST and not (r.folder / MANIFEST).exists()
    assert (manifest["repo_id"], manifest["private"], manifest["dry_run"]) == ("someone/ViGOS-7B", True, True)
    by_path = {f["path"]: f for f in manifest["files"]}
    assert sorted(by_path) == expected
    shard = by_path["model-00001-of-00002.safetensors"]
    assert shard["size"] == 1000 and shard["sha256"] == hashlib.sha256(b"\x01" * 1000).hexdigest()
    assert by_path["README.md"]["sha256"] == hashlib.sha256(CARD.encode()).hexdigest()
    assert manifest["total_bytes"] == sum(f["size"] for f in manifest["files"])
    assert {e["path"] for e in manifest["excluded"]} == set(LEFT_OUT)
    assert FakeHfApi.calls == []  # nothing talked to the Hub


def test_upload_creates_the_repo_and_uploads_the_staged_folder(model_dir, tmp_path, fake_hub, monkeypatch, caplog):
    monkeypatch.setenv("VIGOS_TEST_HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    r = publish(model_dir, tmp_path / "staging", private=True)
    assert not r.dry_run and r.url == "https://huggingface.co/someone/ViGOS-7B"
    assert calls("__init__") == [{"token": TOKEN}]
    assert calls("create_repo") == [{"repo_id": "someone/ViGOS-7B", "private": True, "exist_ok": True,
                                     "repo_type": "model"}]
    (upload,) = calls("upload_folder")
    assert (upload["repo_id"], upload["repo_type"], Path(upload["folder_path"])) == (
        "someone/ViGOS-7B", "model", r.folder)
    assert sorted(upload["files"]) == sorted([*MODEL_FILES, "README.md"])
    assert upload["files"]["README.md"] == CARD.encode()
    assert not calls("update_repo_settings")
    # the token is in no written file and no log line
    for path in (tmp_path / "staging").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in caplog.text


def test_public_flag_and_visibility_of_an_existing_repo(model_dir, tmp_path, fake_hub, monkeypatch):
    monkeypatch.setenv("VIGOS_TEST_HF_TOKEN", TOKEN)
    publish(model_dir, tmp_path / "s1", private=False, repo_id="org/public-model")
    assert calls("create_repo")[0]["private"] is False and not calls("update_repo_settings")
    # asked private, but the repo already exists as public: create_repo ignores `private`, so it is set explicitly
    publish(model_dir, tmp_path / "s2", private=True, repo_id="org/public-model")
    assert calls("update_repo_settings") == [{"repo_id": "org/public-model", "private": True}]


def test_missing_token_is_one_line_naming_the_variable(model_dir, tmp_path, fake_hub, monkeypatch):
    monkeypatch.delenv("MY_HF_TOKEN", raising=False)
    with pytest.raises(VigosError) as e:
        publish(model_dir, tmp_path / "staging", token_env="MY_HF_TOKEN")
    msg = str(e.value)
    assert "MY_HF_TOKEN" in msg and "export MY_HF_TOKEN=" in msg and "--dry-run" in msg and "\n" not in msg
    assert not (tmp_path / "staging").exists() and FakeHfApi.calls == []  # failed before staging anything


def test_hub_failure_is_one_line_without_the_token(model_dir, tmp_path, fake_hub, monkeypatch):
    import httpx2

    monkeypatch.setenv("VIGOS_TEST_HF_TOKEN", TOKEN)
    FakeHfApi.fail_with = httpx2.ConnectError(f"[Errno -2] Name or service not known (Bearer {TOKEN})")
    with pytest.raises(VigosError, match="could not create the repo for someone/ViGOS-7B") as e:
        publish(model_dir, tmp_path / "staging")
    assert TOKEN not in str(e.value) and "\n" not in str(e.value) and "re-running resumes" in str(e.value)


def test_restaging_drops_stale_files_and_links_weights(model_dir, tmp_path, fake_hub):
    staging = tmp_path / "staging"
    first = publish(model_dir, staging, dry_run=True)
    (model_dir / "tokenizer.json").unlink()
    second = publish(model_dir, staging, dry_run=True)
    assert "tokenizer.json" in first.files and "tokenizer.json" not in second.files
    assert not (second.folder / "tokenizer.json").exists()
    shard = "model-00001-of-00002.safetensors"
    assert (second.folder / shard).stat().st_ino == (model_dir / shard).stat().st_ino  # hard link, not a copy


@pytest.mark.parametrize(
    ("repo_id", "match"), [("no-owner", "needs its owner"), ("bad//id", "bad --repo-id"), ("a/b c", "bad --repo-id")]
)
def test_bad_repo_id(model_dir, tmp_path, fake_hub, repo_id, match):
    with pytest.raises(VigosError, match=match):
        publish(model_dir, tmp_path / "staging", repo_id=repo_id, dry_run=True)


def test_not_a_merged_model(tmp_path, fake_hub):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(VigosError, match="not a merged model folder: missing config.json"):
        publish(tmp_path / "adapter", tmp_path / "staging", dry_run=True)
    with pytest.raises(VigosError, match="no such model folder"):
        publish(tmp_path / "nope", tmp_path / "staging", dry_run=True)


def test_cli_hub_dry_run_then_upload(model_dir, tmp_path, fake_hub, monkeypatch):
    from huggingface_hub import ModelCard
    from typer.testing import CliRunner

    from vigos.config import load_config
    from vigos.publish.cli import app

    from .test_model_card import card_scores

    (tmp_path / "scores.json").write_text(json.dumps(card_scores()))
    (tmp_path / "base.json").write_text(json.dumps(card_scores(shift=5)))
    (tmp_path / "train.json").write_text(json.dumps(load_config(overrides=["train.learning_rate=2e-6"]).to_dict()))
    (model_dir / "vigos_merge.json").write_text(json.dumps({"base_model": "Qwen/Qwen2.5-VL-7B-Instruct"}))
    args = ["hub", "--model", str(model_dir), "--repo-id", "someone/ViGOS-7B", "--private", "--scores",
            str(tmp_path / "scores.json"), "--baseline", str(tmp_path / "base.json"), "--train-config",
            str(tmp_path / "train.json"), "--gpus", "8", "--gpu-type", "A100",
            "--token-env", "VIGOS_TEST_HF_TOKEN", "--staging", str(tmp_path / "staging")]
    res = CliRunner().invoke(app, [*args, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert f"staged {len(MODEL_FILES) + 1} files for someone/ViGOS-7B" in res.output and "dry run" in res.output
    card = (tmp_path / "staging" / "upload" / "README.md").read_text()
    data = ModelCard(card).data
    assert data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct" and len(data.eval_results) == 20
    assert "| Learning rate | 2e-6 |" in card and "(base) |" in card and 'MODEL_ID = "someone/ViGOS-7B"' in card
    assert FakeHfApi.calls == []

    monkeypatch.setenv("VIGOS_TEST_HF_TOKEN", TOKEN)
    res = CliRunner().invoke(app, [*args, "--upload"])
    assert res.exit_code == 0, res.output
    assert "repo: https://huggingface.co/someone/ViGOS-7B" in res.output and TOKEN not in res.output
    assert calls("create_repo")[0]["private"] is True and len(calls("upload_folder")) == 1


def write_adapter(folder: Path, overrides: list[str], info: dict | None) -> Path:
    """An adapter folder's training records, as the trainer writes them."""
    from vigos.config import load_config

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vigos_train_config.json").write_text(json.dumps(load_config("tiny", overrides=overrides).to_dict()))
    if info is not None:
        (folder / "vigos_train_info.json").write_text(json.dumps(info))
    return folder


def test_cli_without_repo_id_is_a_dry_run_under_a_placeholder(model_dir, tmp_path, fake_hub, monkeypatch):
    from typer.testing import CliRunner

    from vigos.publish.cli import app

    monkeypatch.setenv("VIGOS_HOME", str(tmp_path / "home"))
    adapter = write_adapter(tmp_path / "adapter", [], {"world_size": 1, "device": "cpu", "steps": 4})
    (model_dir / "vigos_merge.json").write_text(json.dumps({"base_model": "Qwen/Qwen2.5-VL-7B-Instruct",
                                                            "adapter": str(adapter)}))
    res = CliRunner().invoke(app, ["hub", "--model", str(model_dir), "--gpus", "0", "--preset", "tiny"])
    assert res.exit_code == 0, res.output
    assert "staged" in res.output and "your-org/vigos-tiny-demo" in res.output and FakeHfApi.calls == []
    readme = tmp_path / "home" / "hub-staging" / "vigos-tiny-demo" / "upload" / "README.md"
    assert '| GPUs | CPU |' in readme.read_text()
    res = CliRunner().invoke(app, ["hub", "--model", str(model_dir), "--gpus", "0", "--upload"])
    assert isinstance(res.exception, VigosError) and "--upload needs --repo-id" in str(res.exception)
    res = CliRunner().invoke(app, ["hub", "--model", str(model_dir), "--gpus", "8"])
    assert isinstance(res.exception, VigosError) and "--gpu-type" in str(res.exception)


def test_cli_hub_card_follows_the_adapters_records(model_dir, tmp_path, fake_hub, monkeypatch):
    """Without --train-config the card's hyper-parameters, data and hardware are the adapter's, not the preset's;
    the subset note follows the evaluation folder's record."""
    from huggingface_hub import ModelCard
    from typer.testing import CliRunner

    from vigos.publish.cli import app

    from .test_model_card import card_scores, table

    monkeypatch.setenv("VIGOS_HOME", str(tmp_path / "home"))
    adapter = write_adapter(tmp_path / "run" / "adapter", ["train.learning_rate=3e-4", "data.source=org/my-data",
                                                           "data.max_samples=64"],
                            {"world_size": 2, "device": "NVIDIA H100 80GB HBM3", "steps": 4})
    (model_dir / "vigos_merge.json").write_text(json.dumps({"base_model": "Qwen/Qwen2.5-VL-7B-Instruct",
                                                            "adapter": str(adapter)}))
    evaluation = tmp_path / "eval"
    (evaluation / "responses").mkdir(parents=True)
    (evaluation / "scores.json").write_text(json.dumps(card_scores()))
    (evaluation / "responses" / "eval_run.json").write_text(json.dumps(
        {"settings": {"sampling": {"temperature": 1.0, "top_p": 0.9, "top_k": 20, "max_new_tokens": 48},
                      "seed": 42, "max_examples": 100}}))
    staging = tmp_path / "staging"
    args = ["hub", "--model", str(model_dir), "--scores", str(evaluation / "scores.json"), "--staging", str(staging)]
    res = CliRunner().invoke(app, args)  # the preset is paper-7b, the model was trained otherwise
    assert res.exit_code == 0, res.output
    card = (staging / "upload" / "README.md").read_text()
    rows = table(card, "Training Details")
    assert (rows["Learning rate"], rows["LoRA rank"], rows["Training steps"]) == ("0.0003", "8", "4")
    assert rows["GPUs"] == "2 × NVIDIA H100 80GB HBM3"
    assert ModelCard(card).data.datasets == ["org/my-data"]
    assert table(card, "Model Details")["Training data"] == "org/my-data (max_samples 64)"
    assert "at most 100 examples per benchmark" in card
    assert table(card, "Evaluation Protocol")["Maximum generated tokens"] == "48"

    # an explicit --train-config still wins (the hardware is still the adapter's record)
    (tmp_path / "train.yaml").write_text("train:\n  learning_rate: 2.0e-6\n")
    res = CliRunner().invoke(app, [*args, "--train-config", str(tmp_path / "train.yaml")])
    assert res.exit_code == 0, res.output
    card = (staging / "upload" / "README.md").read_text()
    assert table(card, "Training Details")["Learning rate"] == "2e-6"
    assert table(card, "Training Details")["GPUs"] == "2 × NVIDIA H100 80GB HBM3"

    # --adapter points at the records when the merge record names none (or names one not on this machine)
    (model_dir / "vigos_merge.json").write_text(json.dumps({"base_model": "Qwen/Qwen2.5-VL-7B-Instruct",
                                                            "adapter": "/pvc/elsewhere/adapter"}))
    res = CliRunner().invoke(app, [*args, "--adapter", str(adapter)])
    assert res.exit_code == 0, res.output


def test_cli_hub_without_training_records_says_what_to_pass(model_dir, tmp_path, fake_hub, monkeypatch):
    from typer.testing import CliRunner

    from vigos.publish.cli import app

    monkeypatch.setenv("VIGOS_HOME", str(tmp_path / "home"))
    # model_dir's vigos_merge.json names an adapter that is not on this machine
    res = CliRunner().invoke(app, ["hub", "--model", str(model_dir), "--gpus", "0"])
    error = res.exception
    assert isinstance(error, VigosError) and "\n" not in str(error)
    assert "cannot tell how the model was trained" in str(error) and "/pvc/run-1/adapter" in str(error)
    assert "pass --train-config FILE (the train step's config.yaml) or --adapter DIR" in str(error)
    (model_dir / "vigos_merge.json").unlink()
    res = CliRunner().invoke(app, ["hub", "--model", str(model_dir), "--gpus", "0"])
    assert isinstance(res.exception, VigosError) and "has no vigos_merge.json naming its adapter" in str(res.exception)
    # an adapter without vigos_train_info.json: the hardware must be given
    adapter = write_adapter(tmp_path / "adapter", [], None)
    res = CliRunner().invoke(app, ["hub", "--model", str(model_dir), "--adapter", str(adapter)])
    assert isinstance(res.exception, VigosError) and "pass --gpus N (0: CPU) and --gpu-type" in str(res.exception)
    res = CliRunner().invoke(app, ["hub", "--model", str(model_dir), "--adapter", str(adapter), "--gpus", "0"])
    assert res.exit_code == 0, res.output
