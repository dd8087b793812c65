"""Whole Hugging Face repositories (safetensors, config, tokenizer: for engines that read the
Hugging Face layout), fetched with ``huggingface_hub.snapshot_download`` and every file checked
against the hub's checksums.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path
from typing import Any

from enginehouse.errors import EnginehouseError, InvalidRequest, StoreError, UpstreamUnavailable
from enginehouse.store.hf.hub import (
    COMMIT_RE,
    DEFAULT_REVISION,
    HfAccessDenied,
    HfRepoNotFound,
    hf_endpoint,
    hf_token,
    raise_for_hub_status,
)
from enginehouse.store.hf.names import HF_STORE_HOST, REPO_PART_RE
from enginehouse.store.store import Store

__all__ = ["download_hf_repo", "hf_repo_root"]


def hf_repo_root(store: Store) -> Path:
    """Where :func:`download_hf_repo` puts repositories for ``store``: ``<root>/hf``."""
    return store.root / "hf"


def _split_repo_id(repo_id: str) -> tuple[str, str]:
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(
        REPO_PART_RE.fullmatch(p) and ".." not in p and not p.endswith((".", "-")) for p in parts
    ):
        raise InvalidRequest(f"invalid Hugging Face repository id {repo_id!r}: expected owner/repo")
    return parts[0], parts[1]


def _git_blob_sha1(path: Path, size: int) -> str:
    h = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def _map_hub_exception(
    e: Exception, repo_id: str, endpoint: str, token: str | None, revision: str
) -> Exception:
    from huggingface_hub import errors as hf_errors

    shown = f"{HF_STORE_HOST}/{repo_id}"
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(e, hf_errors.HfHubHTTPError) and isinstance(status, int):
        headers = getattr(response, "headers", {}) or {}
        try:
            body = response.content  # type: ignore[union-attr]
        except Exception:
            body = b""
        try:
            raise_for_hub_status(
                status,
                headers,
                body,
                shown=shown,
                repo_id=repo_id,
                endpoint=endpoint,
                token=token,
                what=revision,
            )
        except EnginehouseError as mapped:
            return mapped
    if isinstance(e, hf_errors.GatedRepoError):
        return HfAccessDenied(f"Hugging Face repository {repo_id} is gated: set HF_TOKEN ({e})")
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return HfRepoNotFound(shown, f"repository {repo_id} has no revision {revision}")
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        hint = "" if token else " (or it is private: set HF_TOKEN)"
        return HfRepoNotFound(shown, f"repository {repo_id} does not exist{hint}")
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UpstreamUnavailable(f"downloading {repo_id} from Hugging Face ({endpoint}) failed: {first_line}")


def _download_repo_sync(
    endpoint: str,
    repo_id: str,
    dest_dir: Path,
    revision: str | None,
    token: str | None,
    allow_patterns: list[str] | str | None,
) -> Path:
    from huggingface_hub import HfApi, get_cached_repo_tree, snapshot_download
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Quiet(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    owner, repo = _split_repo_id(repo_id)
    rev = revision or DEFAULT_REVISION
    api = HfApi(endpoint=endpoint, token=token or False)
    try:
        info = api.model_info(repo_id, revision=rev)
    except Exception as e:
        raise _map_hub_exception(e, repo_id, endpoint, token, rev) from e
    commit = info.sha
    if not isinstance(commit, str) or not COMMIT_RE.fullmatch(commit):
        raise UpstreamUnavailable(f"Hugging Face gave no valid commit for {repo_id} at {rev}")
    if isinstance(info.id, str) and info.id.lower() == repo_id.lower():
        owner, repo = _split_repo_id(info.id)
    if info.gated and not token:
        raise HfAccessDenied(
            f"Hugging Face repository {owner}/{repo} is gated: accept its terms at {endpoint}/{owner}/{repo},"
            " then set HF_TOKEN to an access token of that account"
        )
    target = Path(dest_dir) / owner / repo / commit
    target.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(
            f"{owner}/{repo}",
            revision=commit,
            endpoint=endpoint,
            token=token or False,
            local_dir=target,
            cache_dir=Path(dest_dir) / ".cache",
            allow_patterns=allow_patterns,
            tqdm_class=Quiet,
        )
        tree = get_cached_repo_tree(f"{owner}/{repo}", revision=commit, local_dir=target)
    except Exception as e:
        raise _map_hub_exception(e, f"{owner}/{repo}", endpoint, token, rev) from e
    # Verify what arrived against the listing: sha256 for LFS files, the git blob id for the rest.
    by_path = {f.path: f for f in tree}
    root = target.resolve()
    for path in filter_repo_objects(list(by_path), allow_patterns=allow_patterns):
        entry = by_path[path]
        local = (target / path).resolve()
        if not local.is_relative_to(root) or not local.is_file():
            raise StoreError(f"{path} of {owner}/{repo} is missing from {target} after the download")
        size = local.stat().st_size
        if entry.lfs is not None:
            ok = size == entry.lfs.size and _sha256_file(local) == entry.lfs.sha256.lower()
        else:
            ok = size == entry.size and _git_blob_sha1(local, size) == entry.blob_id
        if not ok:
            with contextlib.suppress(OSError):
                local.unlink()
            raise StoreError(
                f"{path} of {owner}/{repo} does not match the hub's checksum; it was deleted (download again)"
            )
    return target


async def download_hf_repo(
    endpoint: str | None,
    repo_id: str,
    dest_dir: Path | str,
    *,
    revision: str | None = None,
    token: str | None = None,
    allow_patterns: list[str] | str | None = None,
) -> Path:
    """Download repository ``owner/repo`` at ``revision`` (default main) into
    ``dest_dir/{owner}/{repo}/{commit}`` (use :func:`hf_repo_root` of the store for ``dest_dir``)
    with ``huggingface_hub.snapshot_download``; every file is checked against the hub's checksums.
    Returns that directory. Endpoint and token default as in :func:`pull_hf`. Needs the
    huggingface_hub package. Errors: HfAccessDenied, HfRepoNotFound, UpstreamUnavailable, StoreError.
    """
    ep = hf_endpoint(endpoint)
    tok = hf_token(token)
    _split_repo_id(repo_id)
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as e:
        raise StoreError(
            "downloading a whole Hugging Face repository needs the huggingface_hub package"
        ) from e
    return await asyncio.to_thread(
        _download_repo_sync, ep, repo_id, Path(dest_dir), revision, tok, allow_patterns
    )
