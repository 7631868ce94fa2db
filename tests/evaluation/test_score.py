"""Scoring saved responses with the rule grader: grades/ and scores.json, input validation, the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vigos.config import EvalConfig
from vigos.errors import VigosError
from vigos.evaluation.cli import app
from vigos.evaluation.score import read_responses, score_responses


def row(bench, qid, s, response, reference, kind, **extra):
    return {"benchmark": bench, "example_id": qid, "sample_index": s, "response": response, "reference": reference,
            "answer_type": kind, **extra}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def responses(tmp_path):
    d = tmp_path / "run" / "responses"
    write_jsonl(d / "mathvista.jsonl", [
        row("mathvista", 0, 0, "<think>..</think>\\boxed{12 cm}", "12", "numeric"),
        row("mathvista", 0, 1, "\\boxed{13}", "12", "numeric"),
        row("mathvista", 1, 0, "\\boxed{0.5} then \\boxed{\\frac{1}{3}", "0.5", "numeric"),  # unclosed: no answer
        row("mathvista", 1, 1, "\\boxed{None}", "0.5", "numeric"),
    ])
    write_jsonl(d / "cv-bench.jsonl", [
        row("cv-bench", "c0", 0, "\\boxed{(B)}", "(B) right", "multiple_choice", options=["left", "right"],
            meta={"type": "2D", "source": "ADE20K"}),
        row("cv-bench", "c0", 1, "\\boxed{right}", "(B) right", "multiple_choice", options=["left", "right"],
            meta={"type": "2D", "source": "ADE20K"}),
        row("cv-bench", "c1", 0, "\\boxed{A}", "(B) far", "multiple_choice",
            meta={"type": "3D", "source": "Omni3D"}),
        row("cv-bench", "c1", 1, "\\boxed{\\text{B}}", "(B) far", "multiple_choice",
            meta={"type": "3D", "source": "Omni3D"}),
    ])
    write_jsonl(d / "vilp-f.jsonl", [
        row("vilp-f", f"0-{p}", 0, f"\\boxed{{{a}}}", "cat", "free_form", meta={"position": p})
        for p, a in ((1, "Cat"), (2, "dog"), (3, "cat"))
    ])
    return d


def test_score_a_responses_folder(responses, tmp_path):
    grades = tmp_path / "run" / "grades"
    out = tmp_path / "run" / "scores.json"
    scores = score_responses(responses, EvalConfig(), grades, out)
    assert json.loads(out.read_text()) == scores
    mv = scores["benchmarks"]["mathvista"]
    assert (mv["n_examples"], mv["k"], mv["pass_at_k"], mv["avg_at_k"], mv["grader"]) == (2, 2, 50.0, 25.0, "rules")
    cv = scores["benchmarks"]["cv-bench"]
    assert cv["pass_at_k"] == 100.0 and cv["avg_at_k"] == 75.0
    assert cv["sources"]["ADE20K"]["avg_at_k"] == 100.0 and cv["3D"]["avg_at_k"] == 50.0
    assert cv["official"]["pass_at_k"] is None and cv["official"]["missing_sources"] == ["COCO"]  # meta reached grades
    assert scores["mean"] == {"pass_at_k": 75.0, "avg_at_k": 50.0, "benchmarks": ["mathvista", "cv-bench"],
                              "missing": ["mm-vet", "mmmu", "mmmu-pro", "mathverse", "mmsi", "realworldqa"]}
    assert scores["vilp"]["vilp-f"]["score"] == 50.0 and scores["vilp"]["vilp-f"]["prior"] == 100.0
    assert sorted(p.name for p in grades.iterdir()) == ["cv-bench.jsonl", "mathvista.jsonl", "vilp-f.jsonl"]
    g = read_jsonl(grades / "mathvista.jsonl")
    assert [(r["extracted"], r["correct"], r["grader"]) for r in g] == [
        ("12 cm", True, "rules"), ("13", False, "rules"), (None, False, "rules"), (None, False, "rules"),
    ]
    assert g[0]["response"].startswith("<think>")  # input fields kept
    assert not list(grades.glob(".*"))  # no temp files left behind


def test_one_file_and_recomputed_fields(tmp_path):
    f = tmp_path / "r.jsonl"
    # Stale `extracted` / `correct` in the input are ignored: they are always recomputed.
    write_jsonl(f, [row("mmmu", 1, 0, "\\boxed{C}", "C", "multiple_choice", extracted="A", correct=False)])
    scores = score_responses(f, EvalConfig(), tmp_path / "g")
    assert scores["benchmarks"]["mmmu"]["pass_at_k"] == 100.0
    assert read_jsonl(tmp_path / "g" / "mmmu.jsonl")[0]["extracted"] == "C"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"benchmark": "mmmu", "example_id": 1, "sample_index": 0, "response": "x", "answer_type": "free_form"},
         r"r.jsonl:2: missing field 'reference'; every response row needs benchmark, .*; regenerate"),
        ({**row("mmmu", 1, 0, "x", "y", "essay")}, r"r.jsonl:2: field 'answer_type' is 'essay'; use one of"),
        ({**row("mmmu", 1, "0", "x", "y", "free_form")}, r"r.jsonl:2: field 'sample_index' must be an integer"),
        ({**row("../x", 1, 0, "x", "y", "free_form")}, r"r.jsonl:2: field 'benchmark' must be a name"),
        ({**row("mmmu", 1, 0, "x", None, "free_form")}, r"r.jsonl:2: field 'reference' is null"),
        ({**row("mmmu", 1, 0, "x", "y", "free_form", options="A,B")}, r"r.jsonl:2: field 'options' must be a list"),
        ({**row("mmmu", 0, 0, "x", "y", "free_form")}, r"r.jsonl:2: duplicate sample .* first seen at .*r.jsonl:1"),
        ("{not json", r"r.jsonl:2: not valid JSON"),
    ],
    ids=["missing", "answer-type", "sample-index", "benchmark", "reference", "options", "duplicate", "json"],
)
def test_malformed_rows_name_file_line_and_field(tmp_path, line, message):
    f = tmp_path / "r.jsonl"
    first = json.dumps(row("mmmu", 0, 0, "\\boxed{y}", "y", "free_form"))
    f.write_text(first + "\n" + (line if isinstance(line, str) else json.dumps(line)) + "\n")
    with pytest.raises(VigosError, match=message):
        read_responses([f])


def test_missing_inputs(tmp_path):
    with pytest.raises(VigosError, match="no such responses file or folder"):
        score_responses(tmp_path / "nope", EvalConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(VigosError, match=r"no \*.jsonl response files"):
        score_responses(tmp_path / "empty", EvalConfig())


def test_cli_score_defaults_beside_the_responses(responses):
    res = CliRunner().invoke(app, ["score", str(responses)])
    assert res.exit_code == 0, res.output
    run = responses.parent
    assert (run / "scores.json").is_file() and (run / "grades" / "cv-bench.jsonl").is_file()
    assert "mathvista      Pass@2  50.00  Avg@2  25.00  (n=2, rules)" in res.output
    assert "vilp-f         Score   50.00  Prior 100.00" in res.output


def test_cli_score_options(responses, tmp_path):
    out = tmp_path / "elsewhere" / "s.json"
    res = CliRunner().invoke(app, ["score", str(responses), "--output", str(out), "--grades-dir", str(tmp_path / "g"),
                                   "--grader", "rules"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["grader"] == "rules" and (tmp_path / "g" / "mathvista.jsonl").is_file()


def test_cli_judge_without_endpoint_is_a_user_error(responses, monkeypatch):
    res = CliRunner().invoke(app, ["score", str(responses), "--grader", "judge"])
    assert isinstance(res.exception, VigosError) and "judge_base_url" in str(res.exception)
    res = CliRunner().invoke(app, ["score", str(responses), "--grader", "oracle"])
    assert isinstance(res.exception, VigosError) and "must be one of" in str(res.exception)
    assert not (responses.parent / "scores.json").exists()


def test_rule_grading_in_worker_processes_gives_the_same_grades(monkeypatch):
    from vigos.evaluation import score

    rows = [{"benchmark": b, "example_id": str(i), "sample_index": 0, "response": f"\\boxed{{{a}}}", "reference": r,
             "answer_type": t, "options": o}
            for i, (b, a, r, t, o) in enumerate([
                ("mmmu", "15", "B", "multiple_choice", ["A. 12 m", "B. 15 m"]),
                ("mathvista", "\\dfrac{1}{2}", "0.5", "numeric", None),
                ("mathverse", "2\\sqrt{2}", "\\sqrt{8}", "math", None),
                ("vilp-f", "mice", "mouse", "free_form", None),
                ("mm-vet", "salt and pepper", "salt<AND>pepper", "free_form", None),
                ("mmmu", "0.02", "1/64", "numeric", None),
            ])]
    monkeypatch.setattr(score, "_MIN_PARALLEL_KEYS", 1)
    serial = score._rule_grades(rows, processes=1)
    assert score._rule_grades(rows, processes=2) == serial
    assert [v.correct for v in serial[1]] == [True, True, True, True, True, False]
