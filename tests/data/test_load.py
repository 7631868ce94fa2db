"""Loading a source: Hub id vs local path, every local layout, split selection, undecoded images."""

from __future__ import annotations

import json

import datasets
import pytest

from vigos.data import load as load_mod
from vigos.data.load import load_source
from vigos.data.synthetic import PLANTED_DROPS, make_synthetic, write_synthetic
from vigos.errors import VigosError


@pytest.mark.parametrize("source", ["./missing", "/no/such/dir", "a/b/c", "data.parquet", "rows.jsonl", "~/nope"])
def test_missing_local_path_is_an_error_naming_it(source):
    with pytest.raises(VigosError, match="does not exist") as err:
        load_source(source, "train")
    assert repr(source) in str(err.value)


def test_hub_id_goes_to_load_dataset_and_images_come_back_undecoded(monkeypatch):
    calls = []

    def fake_load_dataset(path, split):
        calls.append((path, split))
        return make_synthetic(2, seed=0)

    monkeypatch.setattr(load_mod.datasets, "load_dataset", fake_load_dataset)
    ds = load_source("owner/name", "train")
    assert calls == [("owner/name", "train")]
    assert ds.features["images"].feature.decode is False
    assert set(ds[0]["images"][0]) == {"bytes", "path"}


def test_hub_failure_is_one_actionable_error(monkeypatch):
    def boom(path, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(load_mod.datasets, "load_dataset", boom)
    with pytest.raises(VigosError, match="could not load Hub dataset 'owner/name'.*no network"):
        load_source("owner/name", "train")


def test_dataset_dict_folder_picks_the_split(tmp_path):
    dd = datasets.DatasetDict({"train": make_synthetic(3, seed=0), "test": make_synthetic(2, seed=1)})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(load_source(str(tmp_path / "dd"), "test")) == 2
    with pytest.raises(VigosError, match="no split 'dev'; its splits: train, test"):
        load_source(str(tmp_path / "dd"), "dev")


def test_parquet_folder_split_and_single_file(tmp_path):
    root = write_synthetic(tmp_path / "pq", 4, seed=0, fmt="parquet")
    ds = load_source(str(root), "train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 4 and ds.features["images"].feature.decode is False
    one = load_source(str(root / "data" / "train-00000-of-00001.parquet"), "train", cache_dir=str(tmp_path / "c"))
    assert len(one) == 4
    with pytest.raises(VigosError, match="no split 'test'; its splits: train"):
        load_source(str(root), "test")


def test_corrupt_images_do_not_break_loading(tmp_path):
    make_synthetic(3, seed=0, bad_rows=True).save_to_disk(str(tmp_path / "d"))
    ds = load_source(str(tmp_path / "d"), "train")
    assert len(list(ds)) == 3 + sum(PLANTED_DROPS.values())  # iterating decodes nothing, so nothing fails


def test_jsonl_paths_are_resolved_and_types_made_consistent(tmp_path):
    root = write_synthetic(tmp_path / "js", 3, seed=0, fmt="jsonl")
    with open(root / "train.jsonl", "a") as f:  # a JSON number as answer, a single image path, no images key
        f.write(json.dumps({"problem": "q", "answer": 4, "images": "images/000000-0.png"}) + "\n")
    ds = load_source(str(root / "train.jsonl"), "train")
    assert len(ds) == 4
    assert ds[3]["answer"] == "4"
    assert ds[3]["images"] == [str((root / "images" / "000000-0.png").resolve())]
    assert len(load_source(str(root), "train")) == 4  # the folder works too


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"problem": "q"}\n{oops\n')
    with pytest.raises(VigosError, match=r"x\.jsonl:2: not valid JSON"):
        load_source(str(tmp_path / "x.jsonl"), "train")


def test_folder_without_data(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(VigosError, match="no save_to_disk dataset, parquet or JSONL files"):
        load_source(str(tmp_path), "train")
