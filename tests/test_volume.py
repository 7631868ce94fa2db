"""Large data by reference: manifests name a folder on the shared volume; reading checks it is that folder."""

import json

import pytest

from vigos import volume
from vigos.errors import VigosError


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "volume" / "run-1" / "merged"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    (folder / "sub" / "config.json").write_text("{}")
    (folder / ".model.safetensors.tmp").write_bytes(b"half")  # an interrupted atomic write is not output
    return folder


def test_manifest_round_trip(data, tmp_path):
    art = tmp_path / "artifact"
    m = volume.write_manifest(art, data, "merged model", extra={"model": "m"})
    assert [f["path"] for f in m["files"]] == ["model.safetensors", "sub/config.json"]
    assert m["total_bytes"] == 1002 and m["model"] == "m" and len(m["files"][0]["sha256"]) == 64
    assert json.loads((art / volume.MANIFEST).read_text()) == m
    assert volume.resolve(art, verify_hashes=True) == data.resolve()
    assert volume.describe(m) == {"path": str(data.resolve()), "kind": "merged model", "files": 2, "total_bytes": 1002}


def test_a_folder_without_a_manifest_is_itself(data):
    assert volume.resolve(data) == data


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "missing on the shared volume"),
        (lambda d: (d / "model.safetensors").write_bytes(b"y" * 10), "the folder changed"),
        (lambda d: (d / "model.safetensors").write_bytes(b"y" * 1000), "sha256 differs"),
    ],
)
def test_a_changed_folder_is_an_error_naming_the_file(data, tmp_path, damage, message):
    art = tmp_path / "artifact"
    volume.write_manifest(art, data, "merged model")
    damage(data)
    with pytest.raises(VigosError, match=message):
        volume.resolve(art, verify_hashes=True)


def test_a_missing_volume_says_to_mount_it(data, tmp_path):
    import shutil

    art = tmp_path / "artifact"
    volume.write_manifest(art, data, "adapter")
    shutil.rmtree(data)
    with pytest.raises(VigosError, match="not mounted"):
        volume.resolve(art)


def test_run_folder(tmp_path):
    assert volume.run_folder(tmp_path, "abc-123", "train") == tmp_path / "abc-123" / "train"
    assert (tmp_path / "abc-123" / "train").is_dir()
    for bad in ("", "..", "a/b"):
        with pytest.raises(VigosError):
            volume.run_folder(tmp_path, bad, "train")
