"""The benchmark registry and loader: entries, ViLP expansion, CV-Bench references, options, bad rows, sources."""

from __future__ import annotations

import io

import datasets
import pytest
from datasets import Features, Image, List, Value
from PIL import Image as PILImage

from vigos.config import EvalConfig
from vigos.data.answers import ANSWER_TYPES
from vigos.errors import VigosError
from vigos.evaluation.benchmarks import (
    BENCHMARKS,
    VILP_PREFIX,
    cv_bench_reference,
    get_benchmark,
    load_benchmark,
    options_from_problem,
    parse_sources,
    vilp_drop_fact,
)
from vigos.evaluation.fixtures import write_benchmark_fixtures


def _png(colour=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-fixtures")
    return dict(s.split("=", 1) for s in write_benchmark_fixtures(root, n=4, seed=3)), str(root / "cache")


def test_every_default_benchmark_has_an_entry():
    for name in EvalConfig().benchmarks:
        spec = get_benchmark(name)
        assert spec.name == name and spec.subsets
        assert spec.answer_type is None or spec.answer_type in ANSWER_TYPES
    assert set(BENCHMARKS) == set(EvalConfig().benchmarks)


def test_registry_entries_follow_evaluation_md():
    pro = get_benchmark("mmmu-pro")
    assert {s.name: s.hf_id for s in pro.subsets} == {
        "standard": "zli12321/mmmu_pro_10options", "vision": "zli12321/mmmu-pro-vision"}
    cv = get_benchmark("cv-bench")
    assert cv.hf_ids == ("nyu-visionx/CV-Bench",) and cv.subsets[0].split == "test"
    assert (cv.problem_field, cv.images_field, cv.answer_field, cv.options_field) == ("prompt", "image", "answer",
                                                                                       "choices")
    assert cv.answer_type == "multiple_choice"
    for name in ("vilp-f", "vilp-p"):
        spec = get_benchmark(name)
        assert spec.hf_ids == ("ViLP/ViLP",) and spec.subsets[0].split == "train"
        assert spec.n_samples(5) == 1
    assert get_benchmark("vilp-p").drop_fact and not get_benchmark("vilp-f").drop_fact
    assert get_benchmark("mmmu").n_samples(5) == 5
    assert get_benchmark("mmsi").multi_image and get_benchmark("mmmu").multi_image
    assert get_benchmark("realworldqa").hf_ids == ("zli12321/realWorldQA",)
    with pytest.raises(VigosError, match="unknown benchmark 'nope'"):
        get_benchmark("nope")


def test_vilp_drop_fact():
    assert vilp_drop_fact("Bananas are yellow. What colour is this fruit?") == "What colour is this fruit?"
    assert vilp_drop_fact("A. B. C?") == "B. C?"  # only the first sentence goes
    assert vilp_drop_fact("What colour is this fruit?") == "What colour is this fruit?"


def test_vilp_expansion(fixtures):
    sources, cache = fixtures
    raw = datasets.load_dataset("parquet", data_files=sources["vilp-f"] + "/ViLP.parquet", split="train",
                                cache_dir=cache)
    raw = raw.cast_column("image2", Image(decode=False))
    for name in ("vilp-f", "vilp-p"):
        items = load_benchmark(name, source=sources[name], cache_dir=cache).items
        assert len(items) == 3 * len(raw)
        for i, item in enumerate(items):
            row, p = divmod(i, 3)
            p += 1
            assert item.meta["position"] == p and item.meta["row"] == row
            assert item.example_id == f"{row}-{p}"
            assert item.reference == raw[row][f"answer{p}"]
            question = raw[row]["question"]
            expected = question if name == "vilp-f" else question.split(".", 1)[1].strip()
            assert item.problem == VILP_PREFIX + expected
            assert item.n_images == 1
        # image{p} goes with position p
        assert items[1].image_bytes[0] == raw[0]["image2"]["bytes"]
    assert "." in raw[0]["question"] and not load_benchmark("vilp-p", source=sources["vilp-p"],
                                                            cache_dir=cache).items[0].problem.endswith(".")


def test_vilp_max_examples_counts_items(fixtures):
    sources, cache = fixtures
    items = load_benchmark("vilp-f", source=sources["vilp-f"], max_examples=5, cache_dir=cache).items
    assert [it.example_id for it in items] == ["0-1", "0-2", "0-3", "1-1", "1-2"]


def test_cv_bench_reference_form(fixtures):
    assert cv_bench_reference("(B)", ["lamp", "chair"]) == "(B) chair"
    assert cv_bench_reference("A", ["lamp", "chair"]) == "(A) lamp"
    assert cv_bench_reference("(C)", ["lamp", "chair"]) is None
    assert cv_bench_reference("chair", ["lamp", "chair"]) is None
    sources, cache = fixtures
    raw = datasets.load_dataset("parquet", data_files=sources["cv-bench"] + "/data/test-00000-of-00001.parquet",
                                split="train", cache_dir=cache)
    items = load_benchmark("cv-bench", source=sources["cv-bench"], cache_dir=cache).items
    for row, item in zip(raw, items, strict=True):
        letter = row["answer"][1]
        assert item.reference == f"{row['answer']} {row['choices'][ord(letter) - 65]}"
        assert item.problem == row["prompt"] and item.options == row["choices"]
        assert item.answer_type == "multiple_choice"
        assert item.meta["type"] == row["type"] and item.meta["task"] == row["task"]
        assert item.meta["source"] == row["source"] and item.meta["idx"] == row["idx"]
    assert {it.meta["source"] for it in items} == {"ADE20K", "COCO", "Omni3D"}  # the official overall's three


def test_cv_bench_row_without_source_is_kept(tmp_path):
    def row(source):
        return {"idx": 0, "type": "2D", "task": "Count", "image": {"bytes": _png(), "path": None},
                "prompt": "How many? (A) 1 (B) 2", "choices": ["1", "2"], "answer": "(B)", "source": source}

    features = Features({"idx": Value("int32"), "type": Value("string"), "task": Value("string"), "image": Image(),
                         "prompt": Value("string"), "choices": List(Value("string")), "answer": Value("string"),
                         "source": Value("string")})
    datasets.Dataset.from_list([row("COCO"), row(None), row(" ")], features=features).save_to_disk(
        str(tmp_path / "cv"))
    loaded = load_benchmark("cv-bench", source=str(tmp_path / "cv"))
    assert not loaded.skipped
    assert [it.meta.get("source") for it in loaded.items] == ["COCO", None, None]
    assert "source" not in loaded.items[1].meta and loaded.items[1].meta["type"] == "2D"


def test_mmmu_pro_subsets_and_quota(fixtures):
    sources, cache = fixtures
    loaded = load_benchmark("mmmu-pro", source=sources["mmmu-pro"], max_examples=5, cache_dir=cache)
    subsets = [it.meta["subset"] for it in loaded.items]
    assert subsets == ["standard"] * 3 + ["vision"] * 2
    assert loaded.items[0].example_id == "standard/0" and loaded.items[3].example_id == "vision/0"
    assert len({it.example_id for it in loaded.items}) == 5
    # the vision subset's empty problem gets the instruction; 10 options parsed from the standard problems
    assert all(it.problem for it in loaded.items)
    assert len(loaded.items[0].options) == 10 and loaded.items[0].answer_type == "multiple_choice"


def test_mmmu_pro_local_folder_needs_both_subsets(tmp_path, fixtures):
    sources, cache = fixtures
    with pytest.raises(VigosError, match="standard/"):
        load_benchmark("mmmu-pro", source=sources["mmmu"], cache_dir=cache)


def test_options_from_problem():
    assert options_from_problem("Q?\nA. red\nB. blue\nC. green") == ["red", "blue", "green"]
    assert options_from_problem("Q?\n(A) 1\n(B) 2") == ["1", "2"]
    assert options_from_problem("Which? Options: A: red, B: blue, C: dark green") == ["red", "blue", "dark green"]
    assert options_from_problem("What is 2+2?") is None
    assert options_from_problem("A. only one option") is None


def test_per_row_answer_types(fixtures):
    sources, cache = fixtures
    types = {name: {it.answer_type for it in load_benchmark(name, source=sources[name], cache_dir=cache).items}
             for name in ("mm-vet", "mathverse", "mathvista", "realworldqa", "mmsi")}
    assert types["mathverse"] == {"math"}
    assert types["mathvista"] == {"numeric"}
    assert types["mmsi"] == {"multiple_choice"}
    assert types["realworldqa"] == {"multiple_choice", "yes_no"}
    assert "free_form" in types["mm-vet"]


def _write_zli(path, rows):
    features = Features({"problem": Value("string"), "answer": Value("string"), "images": List(Image())})
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(path))


def test_bad_rows_are_skipped_and_counted_or_raise_when_strict(tmp_path):
    good = {"bytes": _png(), "path": None}
    rows = [
        {"problem": "ok?", "answer": "A", "images": [good]},
        {"problem": "broken image", "answer": "A", "images": [good, {"bytes": b"not a png", "path": None}]},
        {"problem": "no answer", "answer": "  ", "images": [good]},
        {"problem": "", "answer": "B", "images": [good]},
        {"problem": "text only is fine", "answer": "3", "images": []},
    ]
    _write_zli(tmp_path / "mmsi", rows)
    loaded = load_benchmark("mmsi", source=str(tmp_path / "mmsi"))
    assert [it.example_id for it in loaded.items] == ["0", "4"]  # ids stay the source row index
    assert [(s["row"], s["field"]) for s in loaded.skipped] == [(1, "images"), (2, "answer"), (3, "problem")]
    with pytest.raises(VigosError, match=r"mmsi .* row 1, field 'images'"):
        load_benchmark("mmsi", source=str(tmp_path / "mmsi"), strict=True)


def test_max_images_keeps_the_first_ones(tmp_path):
    images = [{"bytes": _png((10 * k, 0, 0)), "path": None} for k in range(5)]
    _write_zli(tmp_path / "mmmu", [{"problem": "q", "answer": "A", "images": images}])
    loaded = load_benchmark("mmmu", source=str(tmp_path / "mmmu"), max_images=3)
    item = loaded.items[0]
    assert item.image_bytes == [im["bytes"] for im in images[:3]] and loaded.images_truncated == 1
    assert [im.getpixel((0, 0)) for im in item.images] == [(0, 0, 0), (10, 0, 0), (20, 0, 0)]
    assert all(im.mode == "RGB" for im in item.images)


def test_missing_column_is_a_schema_error(tmp_path):
    datasets.Dataset.from_list([{"question": "q", "answer": "A"}]).save_to_disk(str(tmp_path / "x"))
    with pytest.raises(VigosError, match="lacks column.*problem.*images"):
        load_benchmark("mm-vet", source=str(tmp_path / "x"))


def test_parse_sources():
    assert parse_sources(["cv-bench=/data/cv", " mmmu = /d/m "]) == {"cv-bench": "/data/cv", "mmmu": "/d/m"}
    with pytest.raises(VigosError, match="benchmark=path"):
        parse_sources(["cv-bench"])
    with pytest.raises(VigosError, match="unknown benchmark"):
        parse_sources(["cvbench=/x"])
    with pytest.raises(VigosError, match="twice"):
        parse_sources(["mmmu=/a", "mmmu=/b"])


def test_missing_local_source_is_an_error(tmp_path):
    with pytest.raises(VigosError, match="does not exist"):
        load_benchmark("mmmu", source=str(tmp_path / "absent"))
