"""Hugging Face Hub upload: stage the exact folder to upload, write its manifest, then (unless dry run) upload it.

Staging (`<staging_dir>/upload/`, rebuilt on every call) holds what the Hub repo will hold:
- the model folder's files (hard links where the filesystem allows, copies otherwise: a 7B model is 15 GB);
- `README.md` = the generated model card (any README.md of the model folder is replaced).
Left out, each listed in the manifest with the reason:
- `vigos_merge.json`: the merge's verification record; it names local paths of the pipeline (the adapter's folder)
  and says nothing a user of the weights needs (the MLflow merge run keeps it);
- hidden files and folders (`.cache/`, `.DS_Store`...), and pickle weights (`*.bin`, `*.pt`, `*.pth`, `*.pkl`):
  the merge writes safetensors only, and pickles run code when loaded.

`<staging_dir>/upload_manifest.json` (beside the folder, so it is not uploaded) lists every staged file with its size
and sha256, what was left out and why, the repo id and visibility. With `dry_run` that is all that happens.
Otherwise the token is read from the environment variable NAMED by `token_env` (a Kubernetes Secret on the cluster),
the repo is created if missing (`exist_ok`), its visibility set to the one asked for, and the folder uploaded with
`HfApi.upload_folder`: huggingface_hub 2.4 has no `upload_large_folder`; with `hf_xet` installed its `upload_folder`
streams, commits large folders in batches, and resumes when re-run (already-committed files are skipped).
The token is never logged, written, or shown in an error message.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigos.errors import VigosError
from vigos.redact import redact
from vigos.volume import sha256_file, write_atomic

log = logging.getLogger(__name__)

UPLOAD_SUBDIR = "upload"
MANIFEST = "upload_manifest.json"
CARD = "README.md"
INTERNAL_FILES = {"vigos_merge.json": "merge verification record with pipeline-local paths (kept in MLflow)"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")
REQUIRED = ("config.json",)


@dataclass(frozen=True)
class HubResult:
    files: list[str]
    """Paths (relative, sorted) of everything uploaded, or that would be with `dry_run`."""
    url: str | None
    """The repo's URL after an upload; None for a dry run."""
    dry_run: bool
    folder: Path
    """The staged folder (exactly what is uploaded)."""
    manifest: Path


def publish_to_hub(
    model_dir: str | Path,
    *,
    repo_id: str,
    private: bool,
    card_text: str,
    token_env: str,
    dry_run: bool,
    staging_dir: str | Path,
) -> HubResult:
    """Stage `model_dir` + the card under `staging_dir`, write the manifest, and upload unless `dry_run`."""
    model = Path(model_dir)
    _check_repo_id(repo_id)
    token = None if dry_run else _token(token_env)  # fail before hashing gigabytes
    folder, manifest_path, files = stage(model, card_text=card_text, staging_dir=Path(staging_dir),
                                         repo_id=repo_id, private=private, token_env=token_env, dry_run=dry_run)
    if dry_run:
        log.info("dry run: %d files (%s) staged in %s; nothing uploaded", len(files), manifest_path, folder)
        return HubResult(files, None, True, folder, manifest_path)
    assert token is not None
    url = _upload(folder, repo_id=repo_id, private=private, token=token)
    return HubResult(files, url, False, folder, manifest_path)


def stage(
    model: Path, *, card_text: str, staging_dir: Path, repo_id: str, private: bool, token_env: str, dry_run: bool,
) -> tuple[Path, Path, list[str]]:
    """Build `<staging_dir>/upload/` and `<staging_dir>/upload_manifest.json`; returns (folder, manifest, files)."""
    if not model.is_dir():
        raise VigosError(f"{model}: no such model folder (point --model at the merge step's output)")
    missing = [f for f in REQUIRED if not (model / f).is_file()]
    if missing or not any(model.glob("*.safetensors")):
        raise VigosError(f"{model} is not a merged model folder: missing "
                         f"{', '.join(missing) or '*.safetensors weights'} (run `vigos merge` first)")
    folder = staging_dir / UPLOAD_SUBDIR
    if folder.exists():  # a re-run stages afresh: nothing stale from an earlier model may ride along
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    excluded: list[dict[str, str]] = []
    for src in sorted(p for p in model.rglob("*") if p.is_file()):
        rel = src.relative_to(model).as_posix()
        reason = _exclusion(rel)
        if reason:
            excluded.append({"path": rel, "reason": reason})
            continue
        _link_or_copy(src, folder / rel)
    (folder / CARD).write_text(card_text, encoding="utf-8")
    entries = [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
               for p in sorted(q for q in folder.rglob("*") if q.is_file())]
    manifest = {
        "repo_id": repo_id, "repo_type": "model", "private": private, "dry_run": dry_run,
        "token_env": token_env,  # the variable's NAME only
        "source": str(model.resolve()), "folder": str(folder.resolve()),
        "total_bytes": sum(e["size"] for e in entries), "files": entries, "excluded": excluded,
    }
    manifest_path = staging_dir / MANIFEST
    write_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return folder, manifest_path, [e["path"] for e in entries]


def _exclusion(rel: str) -> str | None:
    parts = rel.split("/")
    if any(part.startswith(".") for part in parts):
        return "hidden file"
    if rel in INTERNAL_FILES:
        return INTERNAL_FILES[rel]
    if rel == CARD:
        return "replaced by the generated model card"
    if rel.endswith(PICKLE_SUFFIXES):
        return "pickle file (the weights are published as safetensors)"
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same filesystem: no second copy of 15 GB of weights
    except OSError:
        shutil.copy2(src, dst)


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise VigosError(f"bad --repo-id {repo_id!r}: {e}") from None
    if "/" not in repo_id:  # without the owner the card's MODEL_ID would not name the repo the Hub creates
        raise VigosError(f"--repo-id {repo_id!r} needs its owner: OWNER/NAME (a user or organisation on the Hub)")


def _token(token_env: str) -> str:
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise VigosError(
            f"no Hugging Face token: environment variable {token_env} is empty or unset; export {token_env}=<a write "
            f"token from https://huggingface.co/settings/tokens> (on the cluster: the HF token Secret's env var), "
            "or use --dry-run"
        )
    return token


def _hub_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]  # HfHubHTTPError is an OSError
    try:  # huggingface_hub 2.x talks through httpx2; its connection errors are not OSErrors
        import httpx2

        errors.append(httpx2.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


def _upload(folder: Path, *, repo_id: str, private: bool, token: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    step = "create the repo"
    try:
        url = str(api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"))
        step = "check the repo's visibility"
        # `private` is ignored when the repo already exists: set it, so a repo asked to be private never stays public
        if bool(getattr(api.repo_info(repo_id, repo_type="model"), "private", private)) != private:
            log.warning("setting %s to %s", repo_id, "private" if private else "public")
            api.update_repo_settings(repo_id, private=private, repo_type="model")
        step = "upload the folder"
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message="Upload ViGOS model (vigos publish hub)")
    except _hub_errors() as e:
        message = redact(str(e), also=[token]).splitlines()[0][:300] if str(e) else type(e).__name__
        raise VigosError(f"could not {step} for {repo_id} on the Hugging Face Hub: {message} "
                         "(check the network and the token's write access; re-running resumes the upload)") from None
    log.info("uploaded %s to %s", folder, url)
    return url


def read_manifest(staging_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(staging_dir) / MANIFEST).read_text())
