"""`run_eval` end to end on the tiny model: rows, seeds, many questions per call, crash + resume, ranks, settings."""

from __future__ import annotations

import json

import pytest

from vigos.config import load_config
from vigos.data.answers import ANSWER_TYPES
from vigos.errors import VigosError
from vigos.evaluation import run as run_mod
from vigos.evaluation.fixtures import write_benchmark_fixtures
from vigos.evaluation.run import ROW_FIELDS, part_path, read_rows, responses_path, run_eval
from vigos.generation import HFEngine

BENCHES = ["mmmu", "cv-bench", "vilp-p"]
N_ROWS = 3  # mmmu / cv-bench: 3 questions x 2 samples; vilp-p: 9 items x 1 sample


class Killed(Exception):
    pass


class CountingEngine:
    """Wraps an engine; counts calls and requests."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.requests = []

    def generate(self, requests, params, **kwargs):
        self.calls += 1
        self.requests.extend(requests)
        return self.inner.generate(requests, params)


class NoEngine:
    def generate(self, requests, params, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("nothing should be generated")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return write_benchmark_fixtures(tmp_path_factory.mktemp("eval-fx"), BENCHES, n=N_ROWS, seed=0)


@pytest.fixture
def cfg(tiny_model_dir, sources):
    cfg = load_config("tiny", overrides=[
        f"model.name_or_path={tiny_model_dir}", "eval.n_samples=2", "eval.max_new_tokens=8", "eval.batch_size=4",
        "eval.max_examples=null",
    ])
    cfg.eval.benchmarks = list(BENCHES)
    cfg.eval.sources = list(sources)
    return cfg


@pytest.fixture
def engine(tiny_model, tiny_processor):
    return CountingEngine(HFEngine(tiny_model, tiny_processor, batch_size=4, cache_implementation=None))


EXPECTED = {"mmmu": 6, "cv-bench": 6, "vilp-p": 9}


def _all_rows(out):
    return {name: read_rows(responses_path(out, name))[0] for name in BENCHES}


def _check_contract(rows_by_bench, cfg):
    for name, rows in rows_by_bench.items():
        assert len(rows) == EXPECTED[name]
        k = 1 if name.startswith("vilp") else 2
        keys = [(r["example_id"], r["sample_index"]) for r in rows]
        assert len(set(keys)) == len(keys)
        # canonical order: item order, then sample order
        assert [r["sample_index"] for r in rows] == [s for _ in range(len(rows) // k) for s in range(k)]
        for r in rows:
            assert tuple(r) == ROW_FIELDS
            assert r["benchmark"] == name
            assert r["response"].startswith("<description>")
            assert r["extracted"] is None and r["correct"] is None
            assert r["answer_type"] in ANSWER_TYPES
            assert r["seed"] == cfg.eval.seed + r["sample_index"]
            assert r["finish_reason"] in ("stop", "length") and 1 <= r["num_tokens"] <= 8
            assert r["prompt"] and r["reference"]
        if name == "cv-bench":
            assert all(r["meta"]["type"] in ("2D", "3D") and r["reference"].startswith("(") for r in rows)
            assert all(isinstance(r["options"], list) for r in rows)
        if name.startswith("vilp"):
            assert [r["meta"]["position"] for r in rows] == [1, 2, 3] * N_ROWS


def test_run_loads_the_model_and_writes_the_contract(cfg, tiny_model_dir, tmp_path):
    counts = run_eval(tiny_model_dir, cfg, tmp_path / "out", progress=False, cache_dir=str(tmp_path / "c"))
    assert {n: c["rows"] for n, c in counts.items()} == EXPECTED
    assert all(c["complete"] and c["generated"] == c["rows"] and c["resumed"] == 0 for c in counts.values())
    _check_contract(_all_rows(tmp_path / "out"), cfg)
    state = json.loads((tmp_path / "out" / "responses" / "eval_run.json").read_text())
    assert state["settings"]["sampling"] == {"temperature": 1.0, "top_p": 0.9, "top_k": 20, "max_new_tokens": 8}
    assert state["benchmarks"]["mmmu"]["complete"] is True


def test_many_questions_per_generate_call(cfg, tiny_model_dir, engine, tiny_processor, tmp_path):
    run_eval(tiny_model_dir, cfg, tmp_path / "out", progress=False, engine=engine, processor=tiny_processor,
             cache_dir=str(tmp_path / "c"))
    # 6 + 6 + 9 sequences in chunks of batch_size 4: 2 + 2 + 3 calls, and calls mix questions
    assert engine.calls == 7 and len(engine.requests) == 21
    prompts_in_first_call = {r.prompt for r in engine.requests[:4]}
    assert len(prompts_in_first_call) >= 2


def test_crash_then_resume_generates_only_the_missing_rows(cfg, tiny_model_dir, engine, tiny_processor, tmp_path):
    out = tmp_path / "out"
    # Reference: one uninterrupted run.
    run_eval(tiny_model_dir, cfg, tmp_path / "ref", progress=False, engine=engine, processor=tiny_processor,
             cache_dir=str(tmp_path / "c"))
    reference = _all_rows(tmp_path / "ref")

    def kill(name, done, total):
        if name == "cv-bench" and done >= 4:
            raise Killed

    with pytest.raises(Killed):
        run_eval(tiny_model_dir, cfg, out, progress=False, engine=engine, processor=tiny_processor,
                 cache_dir=str(tmp_path / "c"), on_chunk=kill)
    assert len(read_rows(responses_path(out, "mmmu"))[0]) == 6  # finished benchmark
    partial = responses_path(out, "cv-bench")
    assert len(read_rows(partial)[0]) == 4 and not responses_path(out, "vilp-p").exists()
    # ... and the kill landed in the middle of a line
    with open(partial, "a") as f:
        f.write('{"benchmark": "cv-bench", "example_id": "2", "sampl')

    resumed = CountingEngine(engine.inner)
    counts = run_eval(tiny_model_dir, cfg, out, progress=False, engine=resumed, processor=tiny_processor,
                      cache_dir=str(tmp_path / "c"))
    assert len(resumed.requests) == 2 + 9  # cv-bench's missing 2 rows, then all of vilp-p
    assert counts["mmmu"]["generated"] == 0 and counts["mmmu"]["resumed"] == 6
    assert counts["cv-bench"]["generated"] == 2 and counts["cv-bench"]["resumed"] == 4
    rows = _all_rows(out)
    _check_contract(rows, cfg)
    # same seeds -> the same samples as the uninterrupted run
    assert {n: [r["response"] for r in rs] for n, rs in rows.items()} == {
        n: [r["response"] for r in rs] for n, rs in reference.items()}

    # complete: a third run generates nothing (and would not even need a model)
    again = run_eval(tiny_model_dir, cfg, out, progress=False, engine=NoEngine(), processor=tiny_processor,
                     cache_dir=str(tmp_path / "c"))
    assert all(c["generated"] == 0 and c["complete"] for c in again.values())

    # ... then score and report, as the DAG's evaluate step does
    from PIL import Image

    from vigos.evaluation.report import write_report
    from vigos.evaluation.score import score_responses

    scores = score_responses(out / "responses", cfg.eval, grades_dir=out / "grades", output=out / "scores.json")
    assert set(scores["benchmarks"]) == {"mmmu", "cv-bench"} and set(scores["vilp"]) == {"vilp-p"}
    assert scores["benchmarks"]["cv-bench"]["n_examples"] == 3
    report = write_report(scores, out / "report", model=str(tiny_model_dir))
    with Image.open(report.chart) as im:
        assert im.format == "PNG"


def test_more_samples_later_adds_only_the_new_ones(cfg, tiny_model_dir, engine, tiny_processor, tmp_path):
    cfg.eval.benchmarks = ["mmmu"]
    cfg.eval.n_samples = 1
    run_eval(tiny_model_dir, cfg, tmp_path / "out", progress=False, engine=engine, processor=tiny_processor,
             cache_dir=str(tmp_path / "c"))
    cfg.eval.n_samples = 3
    more = CountingEngine(engine.inner)
    counts = run_eval(tiny_model_dir, cfg, tmp_path / "out", progress=False, engine=more, processor=tiny_processor,
                      cache_dir=str(tmp_path / "c"))
    assert sorted(r.seed for r in more.requests) == [43, 43, 43, 44, 44, 44]
    assert counts["mmmu"]["rows"] == 9


def test_changed_sampling_settings_refuse_to_resume(cfg, tiny_model_dir, engine, tiny_processor, tmp_path):
    cfg.eval.benchmarks = ["vilp-p"]
    cfg.eval.max_examples = 2
    run_eval(tiny_model_dir, cfg, tmp_path / "out", progress=False, engine=engine, processor=tiny_processor,
             cache_dir=str(tmp_path / "c"))
    cfg.eval.temperature = 0.7
    with pytest.raises(VigosError, match="other settings.*sampling"):
        run_eval(tiny_model_dir, cfg, tmp_path / "out", progress=False, engine=engine, processor=tiny_processor,
                 cache_dir=str(tmp_path / "c"))


def test_student_prompt_set_is_used_recorded_and_guarded(cfg, tiny_model_dir, engine, tiny_processor, tmp_path):
    from vigos.data.prompts import format_student_prompt
    from vigos.evaluation.score import score_responses

    cfg.eval.benchmarks = ["vilp-p"]
    cfg.eval.max_examples = 1
    out = tmp_path / "out"
    run_eval(tiny_model_dir, cfg, out, progress=False, engine=engine, processor=tiny_processor,
             cache_dir=str(tmp_path / "c"))
    first = engine.requests[0]
    problem = first.prompt.split("<|vision_end|>")[-1].split("Problem: ")[1].split("\n")[0]
    assert format_student_prompt(problem, "release") in first.prompt  # the release's text by default
    assert score_responses(out / "responses", cfg.eval)["student_prompt"] == "release"

    cfg.prompt.student = "model-card"  # responses of another prompt set are not interchangeable
    with pytest.raises(VigosError, match="other settings.*student_prompt"):
        run_eval(tiny_model_dir, cfg, out, progress=False, engine=engine, processor=tiny_processor,
                 cache_dir=str(tmp_path / "c"))
    run_eval(tiny_model_dir, cfg, tmp_path / "card", progress=False, engine=engine, processor=tiny_processor,
             cache_dir=str(tmp_path / "c"))
    assert format_student_prompt(problem, "model-card") in engine.requests[-1].prompt
    assert score_responses(tmp_path / "card" / "responses", cfg.eval)["student_prompt"] == "model-card"


def test_two_ranks_write_parts_and_rank0_merges(cfg, tiny_model_dir, engine, tiny_processor, tmp_path, monkeypatch):
    """Ranks simulated one after the other (the barrier is a no-op): shards, part files, merge; same samples."""
    cfg.eval.benchmarks = ["cv-bench"]
    run_eval(tiny_model_dir, cfg, tmp_path / "single", progress=False, engine=engine, processor=tiny_processor,
             cache_dir=str(tmp_path / "c"))
    monkeypatch.setattr(run_mod, "_init_distributed", lambda world: None)
    monkeypatch.setattr(run_mod, "_barrier", lambda: None)
    out = tmp_path / "multi"
    per_rank = {}
    for rank in (1, 0):
        monkeypatch.setattr(run_mod, "dist_rank_world", lambda rank=rank: (rank, 2))
        counted = CountingEngine(engine.inner)
        counts = run_eval(tiny_model_dir, cfg, out, progress=False, engine=counted, processor=tiny_processor,
                          cache_dir=str(tmp_path / "c"))
        per_rank[rank] = len(counted.requests)
        if rank == 1:
            assert part_path(out, "cv-bench", 1, 2).is_file() and not responses_path(out, "cv-bench").exists()
    assert per_rank == {0: 3, 1: 3}  # shards of all 6 pairs, whatever the other rank already wrote
    assert counts["cv-bench"]["rows"] == 6 and counts["cv-bench"]["complete"]
    assert not part_path(out, "cv-bench", 1, 2).exists() and not part_path(out, "cv-bench", 0, 2).exists()
    single = read_rows(responses_path(tmp_path / "single", "cv-bench"))[0]
    multi = read_rows(responses_path(out, "cv-bench"))[0]
    assert multi == single


def test_cli_run(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from vigos.evaluation.cli import app

    (source,) = write_benchmark_fixtures(tmp_path / "fx", ["cv-bench"], n=2, fmt="disk")
    args = ["run", "--model", str(tiny_model_dir), "--output", str(tmp_path / "out"), "--preset", "tiny",
            "--set", "eval.benchmarks=[cv-bench]", "--set", f"eval.sources=[{source}]", "--set", "eval.n_samples=1",
            "--set", "eval.max_new_tokens=4", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cv-bench: 2 examples x 1 samples, 2 generated" in result.output
    assert len(read_rows(responses_path(tmp_path / "out", "cv-bench"))[0]) == 2


def test_plain_progress_lines_for_pod_logs(cfg, tiny_model_dir, engine, tiny_processor, tmp_path, capsys,
                                           monkeypatch):
    import vigos.evaluation.run as run

    monkeypatch.setattr(run, "PROGRESS_LINE_S", 0.0)  # every chunk: the test must not wait a minute
    run_eval(tiny_model_dir, cfg, tmp_path / "out", progress=False, engine=engine, processor=tiny_processor,
             cache_dir=str(tmp_path / "c"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[vigos] eval")]
    names = list(cfg.eval.benchmarks)
    # one line per benchmark with the overall count and an estimate of what is left, without \r
    ends = [line for line in lines if " generated, " in line]
    assert [line.split()[2] for line in ends] == [f"{i}/{len(names)}" for i in range(1, len(names) + 1)]
    assert all("left" in line and "\r" not in line for line in lines)
    assert any("samples (" in line and "/s, about" in line for line in lines)  # within a benchmark


def test_switching_backend_resumes_and_the_record_says_who_wrote_which_rows(cfg, tiny_model_dir, engine,
                                                                            tiny_processor, tmp_path, monkeypatch):
    """The backend is not a setting (run.py's docstring: same prompt, sampling and seeds), so a run may finish
    another backend's rows; eval_run.json's "generations" names each run's backend and the rows it wrote, with
    the server URL's secrets masked, and "settings" (the registry's `eval.*` tags) never mention the backend."""
    cfg.eval.benchmarks = ["mmmu"]
    cfg.eval.max_examples = 1
    out = tmp_path / "out"
    run_eval(tiny_model_dir, cfg, out, progress=False, cache_dir=str(tmp_path / "c"))  # backend engine: loads it
    state = json.loads((out / "responses" / "eval_run.json").read_text())

    # the rest through a server: the OpenAI engine is stood in for by the local engine (the real server path is
    # tests/evaluation/test_serve_backend.py); its URL carries a secret of the environment
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("VIGOS_EVAL_API_KEY", secret)
    served = CountingEngine(engine.inner)
    monkeypatch.setattr(run_mod._Model, "_server_engine", lambda self: served)
    cfg.eval.backend, cfg.eval.base_url = "openai", f"http://gw.example:8000/v1?key={secret}"
    cfg.eval.max_examples = 2
    counts = run_eval(tiny_model_dir, cfg, out, progress=False, cache_dir=str(tmp_path / "c"))
    assert counts["mmmu"]["resumed"] == 2 and counts["mmmu"]["generated"] == 2 and len(served.requests) == 2
    run_eval(tiny_model_dir, cfg, out, progress=False, engine=NoEngine(), cache_dir=str(tmp_path / "c"))

    after = json.loads((out / "responses" / "eval_run.json").read_text())
    assert after["settings"] == state["settings"] and "backend" not in json.dumps(after["settings"])
    first, second = after["generations"]  # the third run wrote nothing: no entry
    assert first["backend"] == "engine" and first["engine"] == "HFEngine" and first["rows"] == {"mmmu": 2}
    assert second["backend"] == "openai" and second["engine"] == "CountingEngine" and second["rows"] == {"mmmu": 2}
    assert second["base_url"] == "http://gw.example:8000/v1?key=***" and second["server_model"] == str(tiny_model_dir)
    assert secret not in (out / "responses" / "eval_run.json").read_text()
