"""Pull ``[host/][namespace/]model[:tag]`` from an Ollama registry (the Docker registry v2 protocol).

    GET {scheme}://{host}/v2/{namespace}/{model}/manifests/{tag}   (Accept: docker manifest v2)
    GET {scheme}://{host}/v2/{namespace}/{model}/blobs/{digest}    (often 307 to a CDN)

The manifest is checked before anything is written (at most 4 MiB, every digest ``sha256:<64
hex>``, sizes present), the blobs the store lacks are downloaded (:mod:`download`: resumable,
parallel ranges, verified), and the registry's manifest bytes are written last, unchanged, once
every blob is in place. Progress is reported as the objects Ollama's ``/api/pull`` streams::

    {"status": "pulling manifest"}
    {"status": "pulling <12 hex>", "digest": "sha256:...", "total": N, "completed": M}   (repeated)
    {"status": "verifying sha256 digest"}
    {"status": "writing manifest"}
    {"status": "success"}
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from enginehouse.errors import InvalidDigest, ModelNotFound, StoreError, UpstreamUnavailable
from enginehouse.store import download
from enginehouse.store.download import (
    BearerAuth,
    HttpSession,
    TransientError,
    check_free_space,
    download_blob,
    error_text,
    pending_bytes,
    run_all,
)
from enginehouse.store.names import ModelName, as_model_name, parse_digest
from enginehouse.store.progress import emitter
from enginehouse.store.store import MANIFEST_MEDIA_TYPE, MAX_MANIFEST_BYTES, MEDIA_MODEL, ModelRecord, Store

__all__ = ["RegistryModelNotFound", "manifest_url", "pull_ollama"]

PullProgress = Callable[[dict[str, Any]], Awaitable[None] | None]


class RegistryModelNotFound(ModelNotFound):
    """The registry has no such name or tag; the message carries the registry's own words."""

    def __init__(self, name: str, registry: str, detail: str, suggestions: list[str] | None = None) -> None:
        super().__init__(name, suggestions)
        self.registry = registry
        self.detail = detail
        message = f"model '{name}' not found in registry {registry}: {detail}"
        if self.suggestions:
            message += "; did you mean " + ", ".join(f"'{s}'" for s in self.suggestions) + "?"
        self.message = message
        self.args = (message,)


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int

    @property
    def status(self) -> str:
        return f"pulling {self.digest.removeprefix('sha256:')[:12]}"


def _base_url(mn: ModelName, insecure: bool) -> str:
    return f"{'http' if insecure else 'https'}://{mn.host}/v2/{mn.namespace}/{mn.model}"


def manifest_url(name: ModelName | str, *, insecure: bool = False) -> str:
    mn = as_model_name(name)
    return f"{_base_url(mn, insecure)}/manifests/{mn.tag}"


def _parse_manifest(data: bytes, label: str) -> list[_Blob]:
    """Every blob the manifest names (layers first, then config, as Ollama pulls them), checked."""
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise UpstreamUnavailable(f"the registry's manifest for {label} is not JSON: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise UpstreamUnavailable(f"the registry's manifest for {label} has no 'layers' list")
    entries: list[Any] = list(manifest["layers"])
    if manifest.get("config") is not None:
        entries.append(manifest["config"])
    blobs: list[_Blob] = []
    seen: set[str] = set()
    has_model = False
    for entry in entries:
        if not isinstance(entry, dict):
            raise UpstreamUnavailable(f"the registry's manifest for {label} has a malformed layer")
        try:
            digest = parse_digest(entry.get("digest"))
        except InvalidDigest as e:
            raise InvalidDigest(f"the registry's manifest for {label} is refused: {e.message}") from e
        size = entry.get("size")
        if type(size) is not int or size < 0:
            raise UpstreamUnavailable(
                f"the registry's manifest for {label} gives blob {digest} no valid size"
            )
        has_model = has_model or entry.get("mediaType") == MEDIA_MODEL
        if digest not in seen:
            seen.add(digest)
            blobs.append(_Blob(digest, size))
    if not has_model:
        raise UpstreamUnavailable(f"the registry's manifest for {label} has no model layer ({MEDIA_MODEL})")
    return blobs


async def _fetch_manifest(http: HttpSession, store: Store, mn: ModelName, url: str, name: str) -> bytes:
    registry = mn.host
    try:
        status, headers, data = await http.get_small(
            url, headers={"Accept": MANIFEST_MEDIA_TYPE}, limit=MAX_MANIFEST_BYTES
        )
    except TransientError as e:
        raise UpstreamUnavailable(f"cannot reach registry {registry}: {e}") from e
    if status == 404:
        raise RegistryModelNotFound(name, registry, error_text(data), store.suggest(name))
    if status != 200:
        raise UpstreamUnavailable(
            f"registry {registry} answered HTTP {status} for the manifest of {name}: {error_text(data)}"
        )
    length = headers.get("content-length")
    if len(data) > MAX_MANIFEST_BYTES or (length and length.isdigit() and int(length) > MAX_MANIFEST_BYTES):
        raise UpstreamUnavailable(
            f"registry {registry} sent a manifest for {name} larger than {MAX_MANIFEST_BYTES >> 20} MiB;"
            " refused"
        )
    claimed = headers.get("docker-content-digest")
    if claimed:
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        try:
            ok = parse_digest(claimed) == actual
        except InvalidDigest:
            ok = True  # another algorithm: nothing to compare with
        if not ok:
            raise InvalidDigest(f"the manifest for {name} does not match its Docker-Content-Digest {claimed}")
    return data


async def pull_ollama(
    store: Store,
    name: str,
    *,
    progress: PullProgress | None = None,
    insecure: bool = False,
    max_parallel_blobs: int = 4,
    part_size: int = 64 << 20,
    stall_timeout: float = 30.0,
) -> ModelRecord:
    """Pull ``name`` into ``store`` and return the resolved model.

    ``insecure`` allows plain http, for the name's own host only (redirects to, and token services
    on, other hosts must still be https). Errors: InvalidName, RegistryModelNotFound (a
    ModelNotFound), InvalidDigest, UpstreamUnavailable, StoreError (including too little disk space).
    """
    mn = ModelName.parse(name)
    shown = mn.display

    emit = emitter(progress)

    await emit({"status": "pulling manifest"})
    host = (urlsplit(f"//{mn.host}").hostname or mn.host).lower()
    base = _base_url(mn, insecure)
    async with HttpSession(
        auth=BearerAuth(),
        allow_http_hosts={host} if insecure else set(),
        stall_timeout=stall_timeout,
    ) as http:
        data = await _fetch_manifest(http, store, mn, f"{base}/manifests/{mn.tag}", shown)
        blobs = _parse_manifest(data, shown)
        check_free_space(store, sum(pending_bytes(store, b.digest, b.size) for b in blobs))

        def reporter(blob: _Blob) -> Callable[[int, int], Awaitable[None]]:
            async def report(completed: int, total: int) -> None:
                await emit(
                    {"status": blob.status, "digest": blob.digest, "total": total, "completed": completed}
                )

            return report

        slots = asyncio.Semaphore(max(1, max_parallel_blobs))

        async def fetch(blob: _Blob) -> None:
            if store.has_blob(blob.digest):  # costs nothing but the progress line
                await reporter(blob)(blob.size, blob.size)
                return
            async with slots:
                await download_blob(
                    store,
                    blob.digest,
                    blob.size,
                    f"{base}/blobs/{blob.digest}",
                    http,
                    progress=reporter(blob),
                    part_size=part_size,
                    connections=download.tuning.CONNECTIONS_PER_BLOB,
                )

        await run_all([fetch(b) for b in blobs])

    await emit({"status": "verifying sha256 digest"})
    for b in blobs:  # each was verified as it arrived; make sure none went missing since
        if not store.has_blob(b.digest):
            raise StoreError(f"blob {b.digest} of {shown} vanished from the store during the pull")
    await emit({"status": "writing manifest"})
    store.write_manifest_bytes(mn, data)
    await emit({"status": "success"})
    return store.resolve(mn)
