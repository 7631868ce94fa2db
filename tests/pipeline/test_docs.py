"""The user-facing docs: they link to each other, stay inside the repository, and agree with k8s/ and the Makefile."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_readme_links_every_doc_and_the_cluster_guide():
    text = README.read_text()
    for target in ("docs/architecture.md", "docs/operations.md", "docs/training.md", "docs/evaluation.md",
                   "k8s/README.md"):
        assert f"]({target})" in text, target
        assert (ROOT / target).is_file(), target


def test_relative_links_resolve():
    for doc in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).resolve().exists(), f"{doc.name}: {target}"


def test_nothing_points_outside_the_repository():
    """Design notes outside the repository (`../shared/...`) are not there for a user: docs/ replaces them."""
    files = [README, *DOCS, *(ROOT / "pipeline").glob("*.py"), *(ROOT / "components").glob("*.py")]
    for path in files:
        text = path.read_text()
        assert "shared/design" not in text and "../shared" not in text and "shared/seed" not in text, path


def test_readme_lists_every_secret_and_installs_without_the_templates():
    secrets = [d["metadata"]["name"] for d in yaml.safe_load_all((ROOT / "k8s/base/secrets.yaml").read_text())]
    assert len(secrets) == 5
    text = README.read_text()
    for name in secrets:
        assert f"create secret generic {name} " in text, name
        assert f"| `{name}` |" in text, name
    # the install command leaves the Secret templates out; a plain `apply -k` appears only in the warning
    assert "kubectl apply -k k8s/overlays/a100 -l 'vigos.dev/secret-template!=true'" in text
    plain = [line for line in text.splitlines()
             if "kubectl apply -k k8s/overlays/a100" in line and "secret-template!=true" not in line]
    assert plain and all("Never run" in line for line in plain), plain
    assert text.index("create secret generic vigos-hf-token") < text.index("kubectl apply -k k8s/overlays/a100 -l")


def test_readme_names_the_four_images_make_images_builds():
    makefile = (ROOT / "Makefile").read_text()
    built = re.findall(r"(vigos-[a-z]+):docker/", makefile)
    assert sorted(built) == ["vigos-cpu", "vigos-cuda", "vigos-mlflow", "vigos-vllm"]
    text = README.read_text()
    assert "the four images" in text
    for name in built:
        assert f"`{name}`" in text, name
