"""A stand-in for the lent GPU machine's Python on this machine: a folder of site-packages holding only the packages
its image has (`benchmarks/device_packages.txt`), linked from this Python's own, so the device check's dry run
(`make device-dry`) fails here, as it would there, on any import of a package the device lacks (deepspeed, mlflow,
kfp, datasets, ...).

    python benchmarks/device_site.py build/device-site        # then: python -S with PYTHONPATH=build/device-site

Linked: each installed distribution whose name is in the list, and what these require as installed here (torch's
CUDA libraries; huggingface_hub 2's httpx2, where the device's 1.33 uses httpx), each with its .dist-info
(transformers checks versions through it). Left out: every other installed distribution (printed), and those the
carried wheels replace (`--wheels`, default `.whl`): `benchmarks/device_check.sh` installs those itself, as on the
device. Versions are this machine's, not the device's (torch 2.14 here, 2.11 there): the stand-in checks which
packages are imported, not how they behave.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(roots: set[str], installed: dict[str, md.Distribution]) -> set[str]:
    """`roots` and every installed distribution they require, transitively, extras only where asked for (torch's
    CUDA libraries come as `cuda-toolkit[cublas,...]`)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(name, frozenset()) for name in roots]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in installed:
            continue
        seen.add((name, extras))
        for line in installed[name].requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((norm(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


def link_distribution(dist: md.Distribution, site: Path) -> None:
    """Symlink the distribution's top-level modules and its .dist-info into `site`; a namespace folder (no
    __init__.py, shared by several distributions: nvidia/, google/) is made real and only this one's entries in
    it are linked."""
    entries = set()
    for f in dist.files or []:
        parts = f.parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".data"):
            continue
        top = Path(dist.locate_file(parts[0]))
        if top.is_dir() and not (top / "__init__.py").exists() and len(parts) > 2:
            entries.add((parts[0], parts[1]))
        else:
            entries.add((parts[0],))
    for entry in sorted(entries):
        src, dst = Path(dist.locate_file(Path(*entry))), site.joinpath(*entry)
        if dst.exists() or dst.is_symlink() or not src.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)


def build_site(site: Path, packages: Path, wheels: Path) -> tuple[list[str], list[str], list[str]]:
    """Link the device's distributions into `site`; returns (linked, carried as wheels, left out), by name."""
    lines = [line.strip() for line in packages.read_text().splitlines()]
    device = {norm(line) for line in lines if line and not line.startswith("#")}
    carried = {norm(w.name.split("-")[0]) for w in wheels.glob("*.whl")}
    installed = {norm(d.metadata["Name"]): d for d in md.distributions()}
    allowed = requirement_closure(device, installed) - carried
    site.mkdir(parents=True, exist_ok=True)
    linked = sorted(allowed & installed.keys())
    for name in linked:
        link_distribution(installed[name], site)
    return linked, sorted(carried), sorted(installed.keys() - allowed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="folder to create (must not exist or be empty)")
    parser.add_argument("--packages", type=Path, default=HERE / "device_packages.txt")
    parser.add_argument("--wheels", type=Path, default=HERE.parent / ".whl")
    args = parser.parse_args()
    if args.site.exists() and any(args.site.iterdir()):
        raise SystemExit(f"{args.site} is not empty: remove it first")
    linked, carried, left_out = build_site(args.site, args.packages, args.wheels)
    print(f"{args.site}: {len(linked)} distributions linked; carried as wheels: {', '.join(carried) or 'none'}; "
          f"left out ({len(left_out)}): {', '.join(left_out)}")

if __name__ == "__main__":
    main()
