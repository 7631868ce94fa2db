"""Synthetic data: Vision-SR1-47K's schema, answers determined by the image, deterministic, three layouts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

from vigos.data.answers import normalize_answer
from vigos.data.synthetic import COLOURS, PLANTED_DROPS, SHAPES, make_synthetic, write_synthetic

SCHEMA = ["problem", "images", "answer", "problem_id", "data_source", "options", "solution"]


@pytest.fixture(scope="module")
def ds() -> datasets.Dataset:
    return make_synthetic(60, seed=3)


def test_schema_and_image_sizes(ds):
    assert ds.column_names == SCHEMA
    assert isinstance(ds.features["images"], datasets.List)
    assert isinstance(ds.features["images"].feature, datasets.Image)
    for row in ds:
        assert len(row["images"]) == 1
        w, h = row["images"][0].size
        assert 56 <= w <= 112 and 56 <= h <= 112
    assert any(p.startswith("<image>") for p in ds["problem"])
    assert any(not p.startswith("<image>") for p in ds["problem"])


def test_every_kind_and_messy_answers_appear(ds):
    kinds = {s.split("/")[1] for s in ds["data_source"]}
    assert kinds == {"count", "colour", "shape", "yes_no", "bar_chart"}
    raw = list(ds["answer"])
    assert any(a.startswith("\\boxed{") for a in raw)
    assert any("<answer>" in a for a in raw)
    assert any(a.startswith("Answer:") for a in raw)
    assert any(normalize_answer(a) == a for a in raw)


def test_answers_are_determined_by_the_image(ds):
    for row in ds:
        answer = normalize_answer(row["answer"])
        kind = row["data_source"].split("/")[1]
        image = row["images"][0].convert("RGB")
        if kind == "colour":
            # The named colour is drawn (exact RGB) in the image.
            assert COLOURS[answer] in {c for _, c in image.getcolors(maxcolors=4096)}
        elif kind == "shape":
            letters = [o.split(". ", 1) for o in row["options"]]
            assert dict(letters)[answer] in SHAPES  # never the distractor "star"
            assert all(o in row["problem"] for o in row["options"])
        elif kind == "yes_no":
            assert answer in {"yes", "no"}
        else:
            assert answer.isdigit() and 1 <= int(answer) <= 9


def test_deterministic_by_seed():
    a, b, c = make_synthetic(12, seed=5), make_synthetic(12, seed=5), make_synthetic(12, seed=6)
    assert a.data.table.equals(b.data.table)
    assert not a.data.table.equals(c.data.table)
    # A row depends on (seed, index) only, not on how many rows are generated.
    assert make_synthetic(3, seed=5).data.table.equals(a.select(range(3)).flatten_indices().data.table)


def test_bad_rows_are_planted():
    bad = make_synthetic(10, seed=1, bad_rows=True)
    assert len(bad) == 10 + sum(PLANTED_DROPS.values())
    ids = list(bad["problem_id"])
    assert ids.index("synthetic-1-000000-dup") > ids.index("synthetic-1-000000")


def test_parquet_in_hub_layout(tmp_path):
    root = write_synthetic(tmp_path / "pq", 8, seed=2, fmt="parquet")
    files = list(root.glob("data/train-*.parquet"))
    assert [f.name for f in files] == ["train-00000-of-00001.parquet"]
    table = pq.read_table(files[0])
    image_type = table.schema.field("images").type
    assert pa.types.is_list(image_type)
    assert image_type.value_type == pa.struct({"bytes": pa.binary(), "path": pa.string()})
    first = table.column("images")[0].as_py()[0]
    assert set(first) == {"bytes", "path"}
    assert PILImage.open(io.BytesIO(first["bytes"])).size[0] >= 56
    # Read back through datasets, the struct is the Image feature again.
    back = datasets.load_dataset("parquet", data_files=str(files[0]), split="train", cache_dir=str(tmp_path / "c"))
    assert isinstance(back.features["images"].feature, datasets.Image)
    single = write_synthetic(tmp_path / "one.parquet", 4, seed=2, fmt="parquet")
    assert single == tmp_path / "one.parquet" and single.is_file()


def test_jsonl_with_relative_image_files(tmp_path):
    root = write_synthetic(tmp_path / "js", 6, seed=2, fmt="jsonl", bad_rows=True)
    lines = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    assert len(lines) == 6 + sum(PLANTED_DROPS.values())
    for row in lines:
        for rel in row["images"]:
            assert not Path(rel).is_absolute() and (root / rel).is_file()


def test_disk_layout(tmp_path):
    root = write_synthetic(tmp_path / "disk", 5, seed=2, fmt="disk")
    assert datasets.load_from_disk(str(root)).column_names == SCHEMA
