"""Pull GGUF models from Hugging Face under the names Ollama users already type.

    hf.co/{owner}/{repo}[:{quant}]          (also huggingface.co/...)

1. List the repository at a revision (default ``main``): :func:`~enginehouse.store.hf.hub.list_repo`.
2. Pick the GGUF: :func:`~enginehouse.store.hf.choose.choose_gguf`.
3. Download ``{endpoint}/{owner}/{repo}/resolve/{commit}/{file}`` (the hub 302s to a CDN, which
   gets no token) with :func:`download_blob`: parallel ranges, resume, and the sha256 from the
   listing verified. A file the listing gives no sha256 for is refused.
4. Register the blob (and a vision projector, ``mmproj*.gguf``, pulled beside it) as
   ``hf.co/{owner}/{repo}:{quant}`` the way an import does (no template layer: the GGUF carries its
   chat template). Pulled without a quant, the name typed
   (``...:latest``) is written as well, so it resolves as it does after an Ollama pull.

Progress events are those of an Ollama pull. Pulling what is already there costs the listing only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from enginehouse.errors import EnginehouseError, StoreError, UpstreamUnavailable
from enginehouse.store.download import HttpSession, check_free_space, download_blob, pending_bytes
from enginehouse.store.hf.choose import choose_gguf, choose_projector
from enginehouse.store.hf.hub import (
    DEFAULT_REVISION,
    HfAccessDenied,
    HfFile,
    HfListing,
    HubAuth,
    hf_endpoint,
    hf_token,
    list_repo,
    probe_access,
    resolve_url,
)
from enginehouse.store.hf.names import HF_STORE_HOST, parse_hf_name
from enginehouse.store.names import ModelName
from enginehouse.store.progress import emitter
from enginehouse.store.store import ModelRecord, Store

__all__ = ["PullProgress", "pull_hf"]

PullProgress = Callable[[dict[str, Any]], Awaitable[None] | None]


def _existing(store: Store, mn: ModelName, digest: str, projector: str | None) -> ModelRecord | None:
    try:
        rec = store.resolve(mn)
    except EnginehouseError:
        return None
    projectors = [store.blob_path(projector)] if projector else []
    # (tags are found case-insensitively)
    return rec if rec.model_digest == digest and rec.projectors == projectors else None


def _register(store: Store, names: list[ModelName], digest: str, projector: str | None) -> ModelRecord:
    """Manifests for the downloaded blobs, as an import writes them (the blobs are linked, not copied)."""
    first = _existing(store, names[0], digest, projector)
    if first is None:
        mmproj = store.blob_path(projector) if projector else None
        first = store.import_gguf(store.blob_path(digest), names[0], link=True, projector=mmproj)
    for other in names[1:]:
        if _existing(store, other, digest, projector) is None:
            store.copy(first.name, other)
    return first


async def _pull_file(
    store: Store,
    http: HttpSession,
    file: HfFile,
    listing: HfListing,
    endpoint: str,
    token: str | None,
    shown: str,
    emit: Callable[[dict[str, Any]], Awaitable[None]],
    blob_kw: dict[str, Any],
) -> None:
    """One LFS file of the repository into the store's blobs (verified), with progress lines."""
    digest, size = file.digest, file.size or 0
    status = f"pulling {(file.sha256 or '')[:12]}"

    async def report(completed: int, total: int) -> None:
        await emit({"status": status, "digest": digest, "total": total, "completed": completed})

    if store.has_blob(digest):
        await report(size, size)
        return
    url = resolve_url(endpoint, listing.repo_id, listing.commit, file.path)
    if listing.gated or listing.private:
        await probe_access(
            http, url, shown=shown, repo_id=listing.repo_id, endpoint=endpoint, token=token, path=file.path
        )
    await download_blob(store, digest, size, url, http, progress=report, **blob_kw)


async def pull_hf(
    store: Store,
    name: str,
    *,
    progress: PullProgress | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    insecure: bool = False,
    **download_kwargs: Any,
) -> ModelRecord:
    """Pull ``hf.co/{owner}/{repo}[:{quant}]`` into ``store``; returns the model as registered
    (``hf.co/{owner}/{repo}:{quant}``, the chosen quant when none was named).

    ``insecure`` allows plain http to the endpoint's host only. ``download_kwargs``: ``stall_timeout``,
    ``part_size``, ``connections``. Errors: InvalidName, InvalidRequest (no such quant, ambiguous,
    split), HfAccessDenied (gated/private: set HF_TOKEN), HfRepoNotFound (a ModelNotFound),
    InvalidDigest, UpstreamUnavailable, StoreError.
    """
    session_kw = {k: download_kwargs.pop(k) for k in ("stall_timeout",) if k in download_kwargs}
    blob_kw = {k: download_kwargs.pop(k) for k in ("part_size", "connections") if k in download_kwargs}
    if download_kwargs:
        raise TypeError(f"pull_hf() got unexpected keyword arguments: {', '.join(sorted(download_kwargs))}")

    ref = parse_hf_name(name)
    ep = hf_endpoint(endpoint)
    tok = hf_token(token)
    rev = revision or DEFAULT_REVISION
    label = f"{HF_STORE_HOST}/{ref.repo_id}"
    shown = ref.name.display

    emit = emitter(progress)

    await emit({"status": "pulling manifest"})
    origin_host = (urlsplit(ep).hostname or "").lower()
    auth = HubAuth({ep: tok} if tok else None)
    async with HttpSession(
        auth=auth, allow_http_hosts={origin_host} if insecure else set(), **session_kw
    ) as http:
        listing = await list_repo(http, ep, ref, rev, tok, shown)
        if listing.gated and not tok:
            raise HfAccessDenied(
                f"Hugging Face repository {listing.repo_id} is gated: accept its terms at"
                f" {ep}/{listing.repo_id}, then set HF_TOKEN to an access token of that account"
            )
        file, tag = choose_gguf(listing.files, ref.quant, label)
        projector = choose_projector(listing.files)
        files = [file] if projector is None else [file, projector]
        for f in files:
            if f.sha256 is None or f.size is None:
                raise UpstreamUnavailable(
                    f"Hugging Face gives no sha256 for {f.path} of {listing.repo_id} (not an LFS file):"
                    " refusing to pull bytes that cannot be verified"
                )
        mn = ModelName(HF_STORE_HOST, ref.name.namespace, ref.name.model, tag)
        names = [mn] if ref.name.tag == tag else [mn, ref.name]
        check_free_space(store, sum(pending_bytes(store, f.digest, f.size or 0) for f in files))
        for f in files:  # the weights, then the vision projector if the repository has one
            await _pull_file(store, http, f, listing, ep, tok, shown, emit, blob_kw)

    await emit({"status": "verifying sha256 digest"})
    for f in files:
        if not store.has_blob(f.digest):
            raise StoreError(f"blob {f.digest} of {shown} vanished from the store during the pull")
    await emit({"status": "writing manifest"})
    mmproj = projector.digest if projector is not None else None
    record = await asyncio.to_thread(_register, store, names, file.digest, mmproj)
    await emit({"status": "success"})
    return record
