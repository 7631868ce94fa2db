"""The `vigos` command line: every usage mistake is one `error:` line on stderr, exit code 2, no traceback, and
nothing written; help reads naturally; the shared flags are the same on every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vigos.cli import main
from vigos.config import ConfigError


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """`vigos ARGS` in-process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- usage mistakes the parser catches ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["trian"], ["No such command 'trian'", "Did you mean 'train'?", "see 'vigos --help'"]),
        (["data", "prepair"], ["No such command 'prepair'", "Did you mean 'prepare'?", "see 'vigos data --help'"]),
        (["train", "--bogus"], ["No such option: --bogus", "see 'vigos train --help'"]),
        (["train", "--output", "x"], ["Missing option '--dataset'", "see 'vigos train --help'"]),
        (["eval", "score"], ["Missing argument 'RESPONSES'", "see 'vigos eval score --help'"]),
        (["train", "--dataset"], ["Option '--dataset' requires an argument"]),
        (["config", "show", "--preset"], ["requires an argument"]),
    ],
)
def test_usage_mistakes_are_one_line(capsys, args, fragments):
    code, out, err = run_main(capsys, *args)
    assert_one_line_error(code, err, *fragments)
    assert out == ""


def test_a_bad_value_is_one_line_and_writes_nothing(capsys, tmp_path):
    code, _, err = run_main(capsys, "data", "synth", "-o", tmp_path / "x", "--rows", "abc")
    assert_one_line_error(code, err, "'--rows' / '-n' ('abc')", "valid integer", "see 'vigos data synth --help'")
    code, _, err = run_main(capsys, "data", "synth", "-o", tmp_path / "x", "--rows=0")
    assert_one_line_error(code, err, "('0')", "greater than or equal to 1")
    assert not (tmp_path / "x").exists()


def test_bare_vigos_and_a_bare_group_show_help(capsys):
    for args in ([], ["data"]):
        code, out, err = run_main(capsys, *args)
        assert code == 2 and "Usage: vigos" in out and "Traceback" not in out + err and err == ""
    code, out, err = run_main(capsys, "--help")
    assert code == 0 and "Commands" in out and err == ""


def test_debug_still_shows_tracebacks(capsys):
    with pytest.raises(ConfigError):
        main(["--debug", "config", "show", "--preset", "huge"])
    with pytest.raises(Exception, match="No such command"):
        main(["--debug", "trian"])


def test_the_installed_entry_point_prints_no_traceback(tmp_path):
    """Through a real process (`python -m vigos.cli`), as a user runs it."""
    env = {**os.environ, "VIGOS_HOME": str(tmp_path / "home")}
    for args in (["trian"], ["config", "show", "--config", "nope.yaml"]):
        proc = subprocess.run([sys.executable, "-m", "vigos.cli", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
    assert sorted(os.listdir(tmp_path)) == []  # nothing written, not even the state folder


# --- config mistakes through the CLI ------------------------------------------------------------------------------


def test_config_mistakes_are_one_line(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("train: [1,\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "typo.yaml").write_text("train:\n  learning_rat: 1.0e-4\n")
    cases = [
        (["--config", tmp_path / "nope.yaml"], ["nope.yaml does not exist"]),
        (["-c", tmp_path / "bad.yaml"], ["bad.yaml is not valid YAML at line"]),
        (["-c", tmp_path / "list.yaml"], ["list.yaml: expected a mapping of sections", "got a list"]),
        (["-c", tmp_path / "typo.yaml"], ["unknown key 'train.learning_rat'; did you mean 'train.learning_rate'?"]),
        (["--set", "train.learning_rate=-1"], ["train.learning_rate is -1.0; it must be > 0"]),
        (["--set", "eval.top_p=1.5"], ["eval.top_p is 1.5; it must be in (0, 1]"]),
        (["--preset", "tiyn"], ["unknown preset 'tiyn' (did you mean 'tiny'?)"]),
    ]
    for args, fragments in cases:
        code, out, err = run_main(capsys, "config", "show", *args)
        assert_one_line_error(code, err, *fragments)
        assert out == ""


# --- `vigos train`: refused before anything starts ----------------------------------------------------------------


def fake_prepared(folder: Path, columns=("problem", "images", "answer")) -> Path:
    """A folder that looks like `vigos data prepare` output to the pre-flight check (no data needed)."""
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{}")
    (folder / "dataset_info.json").write_text(json.dumps({"features": {c: {} for c in columns}}))
    return folder


@pytest.mark.parametrize(
    ("make", "extra", "fragments"),
    [
        (lambda d: d / "nope", [], ["--dataset", "nope does not exist", "vigos data prepare"]),
        (lambda d: (d / "file.arrow").write_text("x") and d / "file.arrow", [], ["is a file, not a prepared dataset"]),
        (lambda d: (d / "raw").mkdir() or d / "raw", [], ["is not a prepared dataset (no state.json"]),
        (lambda d: fake_prepared(d / "cols", ("problem",)), [], ["no column images, answer"]),
        (lambda d: fake_prepared(d / "ok"), ["--set", "model.name_or_path=/no/such/model"],
         ["model path /no/such/model does not exist"]),
        (lambda d: fake_prepared(d / "ok"), ["--set", "train.learning_rate=-1"], ["train.learning_rate is -1.0"]),
        (lambda d: fake_prepared(d / "ok"), ["--config", "nope.yaml"], ["config file nope.yaml does not exist"]),
    ],
)
def test_train_refuses_bad_inputs_before_starting(capsys, tmp_path, monkeypatch, make, extra, fragments):
    monkeypatch.chdir(tmp_path)
    for var in ("VIGOS_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    dataset = make(tmp_path)
    before = sorted(os.listdir(tmp_path))
    code, out, err = run_main(capsys, "train", "--dataset", dataset, "--output", tmp_path / "out",
                              "--preset", "tiny", *extra)
    assert_one_line_error(code, err, *fragments)
    assert sorted(os.listdir(tmp_path)) == before  # no out/, no ./mlruns, no .vigos/


def test_train_refuses_an_output_that_is_a_file(capsys, tmp_path):
    dataset = fake_prepared(tmp_path / "ok")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "out").write_text("x")
    code, _, err = run_main(capsys, "train", "-d", dataset, "-o", tmp_path / "out", "--preset", "tiny",
                            "--set", f"model.name_or_path={tmp_path / 'model'}")
    assert_one_line_error(code, err, "--output", "is a file")


def test_standalone_experiment_keeps_artifacts_out_of_the_working_directory(tmp_path, monkeypatch):
    """`vigos train` run by hand: the local SQLite store under $VIGOS_HOME, its artifacts beside it, no ./mlruns."""
    import mlflow

    from vigos.tracking import tracking_uri, use_experiment

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VIGOS_HOME", str(tmp_path / "home"))
    mlflow.set_tracking_uri(tracking_uri())
    try:
        experiment_id = use_experiment("cli-test")
        with mlflow.start_run(run_name="train") as run:
            mlflow.log_text("hello", "sample.txt")
        location = mlflow.get_experiment(experiment_id).artifact_location
        assert run.info.experiment_id == experiment_id
        assert location.startswith((tmp_path / "home" / "mlflow-artifacts").as_uri())
        assert not (tmp_path / "mlruns").exists()
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        # set_experiment is process-global (and exports MLFLOW_EXPERIMENT_ID): later tests must not inherit it
        import mlflow.tracking.fluent as fluent

        fluent._active_experiment_id = None
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


# --- help and flags -----------------------------------------------------------------------------------------------

COMMANDS_WITH_CONFIG = [["train"], ["merge"], ["data", "prepare"], ["eval", "run"], ["eval", "score"],
                        ["config", "show"]]


def help_text(capsys, monkeypatch, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_main(capsys, *args, "--help")
    assert code == 0 and err == "", err
    return out


@pytest.mark.parametrize("command", COMMANDS_WITH_CONFIG, ids=" ".join)
def test_help_reads_naturally_and_the_shared_flags_match(capsys, monkeypatch, command):
    text = help_text(capsys, monkeypatch, *command)
    for flag in ("--config", "-c", "--preset", "--set", "KEY=VALUE", "FILE", "NAME"):
        assert flag in text, (command, flag)
    if command != ["config", "show"]:
        assert "--output" in text and " -o " in text
    options = [line for line in text.splitlines() if "--help" not in line]
    for raw in ("<str>", "<bool>", "<list[str]>"):
        assert not any(raw in line for line in options), (command, raw)


def test_brackets_in_help_examples_survive_rich_markup(capsys, monkeypatch):
    # in a fresh process: rich fixes its width once per process, and a narrow one elides long help lines
    out = subprocess.run([str(Path(sys.executable).with_name("vigos")), "eval", "run", "--help"], capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "eval.benchmarks=[mmmu,cv-bench]" in out.stdout


def test_data_prepare_takes_its_defaults_from_the_config(tmp_path, monkeypatch):
    """--preset/--config/--set reach data prep; an explicit option still wins."""
    import vigos.data.prepare as prep

    seen = {}

    def fake_prepare(cfg, output, progress=True):
        seen["cfg"] = cfg
        raise ConfigError("stop here")

    monkeypatch.setattr(prep, "prepare", fake_prepare)
    y = tmp_path / "c.yaml"
    y.write_text("data:\n  seed: 7\n  split: validation\n")
    with pytest.raises(SystemExit):
        main(["data", "prepare", "-o", str(tmp_path / "out"), "--preset", "tiny", "-c", str(y),
              "--set", "data.num_proc=2", "--split", "test"])
    cfg = seen["cfg"]
    assert (cfg.max_samples, cfg.seed, cfg.num_proc, cfg.split) == (64, 7, 2, "test")


def test_vigos_home_moves_the_tiny_model(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import vigos.modeling.tiny as tiny
    from vigos.config import load_config
    from vigos.modeling.cli import app

    built = []
    monkeypatch.setattr(tiny, "build_tiny_model", lambda output, seed=0, force=False: built.append(output) or output)
    monkeypatch.setattr(tiny, "read_build_info", lambda path: {})
    monkeypatch.setenv("VIGOS_HOME", str(tmp_path / "home"))
    assert load_config("tiny").model.name_or_path == str(tmp_path / "home" / "tiny-model")
    assert load_config("tiny", overrides=["model.name_or_path=/m"]).model.name_or_path == "/m"
    res = CliRunner().invoke(app, ["tiny"])
    assert res.exit_code == 0, res.output
    assert built == [tmp_path / "home" / "tiny-model"]
    monkeypatch.delenv("VIGOS_HOME")
    assert load_config("tiny").model.name_or_path == ".vigos/tiny-model"  # relative to the working directory
    assert CliRunner().invoke(app, ["tiny"]).exit_code == 0
    assert built[-1] == Path(".vigos/tiny-model")
