"""benchmarks/device_site.py, the device check's stand-in for the lent GPU machine's Python (`make device-dry`): it
links what the device has, and leaves out what it lacks and what travels as wheels. Nothing linked is imported."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import device_site  # noqa: E402


def test_the_stand_in_holds_the_device_packages_only(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "transformers-5.24.0-py3-none-any.whl").touch()  # carried: the script installs it, as on the device
    site = tmp_path / "site"
    linked, carried, left_out = device_site.build_site(site, device_site.HERE / "device_packages.txt", wheels)

    assert carried == ["transformers"]
    assert {"torch", "numpy", "pyyaml"} <= set(linked)
    assert (site / "torch").is_symlink() and (site / "yaml").is_symlink()
    assert list(site.glob("torch-*.dist-info")), "transformers reads versions through the .dist-info"
    # the project's dependencies the device image lacks, and the carried one, stay out
    for dist, module in (("deepspeed", "deepspeed"), ("mlflow", "mlflow"), ("kfp", "kfp"), ("datasets", "datasets"),
                         ("transformers", "transformers")):
        assert dist in left_out
        assert not (site / module).exists()


def test_requirements_follow_only_the_extras_asked_for():
    installed = {device_site.norm(d.metadata["Name"]): d for d in device_site.md.distributions()}
    # accelerate's `deepspeed` extra is not asked for; torch's own requirements are
    closure = device_site.requirement_closure({"accelerate"}, installed)
    assert {"accelerate", "torch", "numpy"} <= closure
    assert "deepspeed" not in closure
