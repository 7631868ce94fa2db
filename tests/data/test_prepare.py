"""Data prep end to end on synthetic data with planted bad rows, in every input layout."""

from __future__ import annotations

import io
import json

import datasets
import pytest
from PIL import Image as PILImage

from vigos.config import DataConfig
from vigos.data.prepare import DROP_REASONS, OUTPUT_FEATURES, _process_row, prepare
from vigos.data.synthetic import PLANTED_DROPS, make_synthetic, write_synthetic
from vigos.errors import VigosError

N = 30


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sources")
    return {
        fmt: str(write_synthetic(root / fmt, N, seed=11, fmt=fmt, bad_rows=True))
        for fmt in ("disk", "parquet", "jsonl")
    }


def _run(source: str, out, **kw) -> dict:
    return prepare(DataConfig(source=source, **kw), out, progress=False)


@pytest.mark.parametrize("fmt", ["disk", "parquet", "jsonl"])
def test_exact_drop_counts_in_every_layout(sources, tmp_path, fmt):
    stats = _run(sources[fmt], tmp_path / "out")
    assert stats["rows_in"] == N + sum(PLANTED_DROPS.values())
    assert stats["rows_out"] == N
    assert stats["dropped"] == {reason: PLANTED_DROPS.get(reason, 0) for reason in DROP_REASONS}
    assert sum(stats["answer_types"].values()) == N
    assert set(stats["image_size"]) == {"width", "height"}
    assert 56 <= stats["image_size"]["width"]["p5"] <= stats["image_size"]["width"]["p95"] <= 112
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["dropped"] == stats["dropped"]
    drops = [json.loads(line) for line in (tmp_path / "out" / "drops.jsonl").read_text().splitlines()]
    assert len(drops) == sum(PLANTED_DROPS.values())
    assert {d["problem_id"] for d in drops if d["reason"] == "duplicate"} == {"synthetic-11-000000-dup"}


def test_output_dataset(sources, tmp_path):
    _run(sources["disk"], tmp_path / "out")
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert out.features == OUTPUT_FEATURES
    raw = make_synthetic(N, seed=11).cast_column("images", datasets.List(datasets.Image(decode=False)))
    raw_by_id = {r["problem_id"]: r for r in raw}
    for row in out.cast_column("images", datasets.List(datasets.Image(decode=False))):
        src = raw_by_id[row["problem_id"]]
        assert row["images"][0]["bytes"] == src["images"][0]["bytes"]  # original bytes, not re-encoded
        assert row["answer_raw"] == src["answer"]
        assert "boxed" not in row["answer"] and "<answer>" not in row["answer"] and row["answer"].strip()
    assert any(r != a for r, a in zip(out["answer_raw"], out["answer"], strict=True))


def test_max_samples_is_seeded_and_deterministic(sources, tmp_path):
    ids = []
    for i, seed in enumerate([1, 1, 2]):
        stats = _run(sources["disk"], tmp_path / f"o{i}", max_samples=10, seed=seed)
        assert (stats["rows_valid"], stats["rows_out"]) == (N, 10)
        ids.append(list(datasets.load_from_disk(str(tmp_path / f"o{i}"))["problem_id"]))
    assert ids[0] == ids[1] != ids[2]


def test_two_processes_give_the_same_result(sources, tmp_path):
    one = _run(sources["parquet"], tmp_path / "a", num_proc=1)
    two = _run(sources["parquet"], tmp_path / "b", num_proc=2)
    assert one["dropped"] == two["dropped"]
    a, b = (datasets.load_from_disk(str(tmp_path / d)) for d in "ab")
    assert a["problem_id"] == b["problem_id"]


def test_min_image_size(sources, tmp_path):
    stats = _run(sources["disk"], tmp_path / "out", min_image_size=80)
    assert stats["dropped"]["tiny_image"] > PLANTED_DROPS["tiny_image"]
    with pytest.raises(VigosError, match="no rows left"):
        _run(sources["disk"], tmp_path / "none", min_image_size=1000)


def test_missing_column_names_it_and_lists_the_columns(tmp_path):
    make_synthetic(3, seed=0).remove_columns("answer").save_to_disk(str(tmp_path / "src"))
    with pytest.raises(VigosError) as err:
        _run(str(tmp_path / "src"), tmp_path / "out")
    msg = str(err.value)
    assert "missing required column 'answer'" in msg
    assert "columns found: problem, images, problem_id, data_source, options, solution" in msg
    assert not (tmp_path / "out").exists()


def test_single_image_column_and_raw_bytes(tmp_path):
    png = io.BytesIO()
    PILImage.new("RGB", (20, 10)).save(png, format="PNG")
    rows = {"problem": ["a?", "b?"], "image": [png.getvalue(), b"junk"], "answer": ["1", "2"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "src"))
    stats = _run(str(tmp_path / "src"), tmp_path / "out")
    assert (stats["rows_out"], stats["dropped"]["unreadable_image"]) == (1, 1)
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert out[0]["images"][0].size == (20, 10) and out[0]["problem_id"] is None and out[0]["options"] is None


def test_image_forms(tmp_path):
    """Every accepted form of an image: PIL, bytes, {bytes, path}, path string, a list or a single one."""
    img = PILImage.new("RGB", (8, 6), (1, 2, 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    png = buf.getvalue()
    (tmp_path / "x.png").write_bytes(png)
    forms = [
        img,
        png,
        {"bytes": png, "path": "x.png"},
        str(tmp_path / "x.png"),
        {"bytes": None, "path": str(tmp_path / "x.png")},
    ]
    for form in forms:
        for images in (form, [form], [form, str(tmp_path / "missing.png")]):
            row = _process_row(
                "q?", images, "\\boxed{4}", None, dict.fromkeys(("problem_id", "data_source", "solution")), 3
            )
            assert row["_drop"] is None, (form, images)
            assert (row["_width"], row["_height"], row["answer"], row["answer_type"]) == (8, 6, "4", "numeric")
            # An unreadable extra image is left out; the row stays.
            assert (len(row["images"]), row["_images_removed"]) == (
                1,
                1 if isinstance(images, list) and len(images) == 2 else 0,
            )
            assert row["images"][0]["bytes"] == png or form is img
    extra = {"problem_id": 7, "data_source": None, "solution": None}
    for images, reason in [
        ([], "no_image"),
        (None, "no_image"),
        ([None], "no_image"),
        (str(tmp_path / "missing.png"), "unreadable_image"),
        (png[:20], "unreadable_image"),
        (12345, "unreadable_image"),
    ]:
        assert _process_row("q?", images, "4", None, extra, 3)["_drop"] == reason
    assert _process_row("<image>", png, "4", None, extra, 3)["_drop"] == "empty_problem"
    assert _process_row("q?", png, "``` ```", None, extra, 3)["_drop"] == "empty_answer"
    assert _process_row("q?", png, "4", '["A. 1", "B. 4"]', extra, 3)["options"] == ["A. 1", "B. 4"]
    assert _process_row("q?", png, "4", None, extra, 3)["problem_id"] == "7"


def test_output_is_replaced_atomically(sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    _run(sources["disk"], out)
    assert not (out / "stale.txt").exists() and (out / "stats.json").is_file()
    # A failing run leaves the previous output as it was, and no scratch folder behind.
    with pytest.raises(VigosError):
        _run(sources["disk"], out, min_image_size=1000)
    assert (out / "stats.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"num_proc": 0}, "num_proc"), ({"max_samples": 0}, "max_samples"), ({"min_image_size": -1}, "min_image_size")],
)
def test_bad_options(sources, tmp_path, kw, match):
    with pytest.raises(VigosError, match=match):
        _run(sources["disk"], tmp_path / "out", **kw)
