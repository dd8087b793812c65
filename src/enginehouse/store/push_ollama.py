"""Push ``host/namespace/model[:tag]`` from the store to an Ollama registry (the Docker registry v2
protocol, as ``ollama push`` speaks it).

    HEAD {scheme}://{host}/v2/{namespace}/{model}/blobs/{digest}     200: the registry has it, skip
    (the upload flow of :mod:`enginehouse.store.upload.blob` for each blob it lacks)
    PUT  {scheme}://{host}/v2/{namespace}/{model}/manifests/{tag}    the manifest, byte for byte

Every layer goes up, then the config, then the manifest exactly as stored (so its digest on the
registry is the one the store shows). Progress is reported as the objects Ollama's ``/api/push``
streams::

    {"status": "retrieving manifest"}
    {"status": "starting upload", "digest": "sha256:...", "total": N}        (a blob the registry lacks)
    {"status": "pushing <12 hex>", "digest": "sha256:...", "total": N, "completed": M}   (repeated)
    {"status": "pushing manifest"}
    {"status": "success"}

The name must say where to push: a registry host or at least a namespace (``you/model``, which goes
to registry.ollama.ai). A bare local name (``mymodel``, ``library/...`` on the default registry) is
refused; copy it under a registry name first (``enginehouse cp``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from enginehouse.errors import InvalidRequest, StoreError, UpstreamUnavailable
from enginehouse.store.download.auth import BearerAuth, error_text
from enginehouse.store.hf import HF_HOSTS
from enginehouse.store.names import DEFAULT_HOST, DEFAULT_NAMESPACE, ModelName, parse_digest
from enginehouse.store.progress import emitter
from enginehouse.store.store import MANIFEST_MEDIA_TYPE, Store
from enginehouse.store.upload.blob import upload_blob
from enginehouse.store.upload.client import RegistryClient, TransientError

__all__ = ["NEEDS_REGISTRY_NAME", "PushReport", "push_ollama", "pushable_name"]

PushProgress = Callable[[dict[str, Any]], Awaitable[None] | None]
NEEDS_REGISTRY_NAME = (
    "push needs a registry name, e.g. registry.example.com/you/model:tag; `enginehouse cp` first"
)


@dataclass(frozen=True)
class PushReport:
    name: ModelName
    manifest_digest: str
    uploaded: list[str]  # digests sent in this push
    skipped: list[str]  # digests the registry already had
    bytes_sent: int


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int
    path: Path

    @property
    def status(self) -> str:
        return f"pushing {self.digest.removeprefix('sha256:')[:12]}"


def pushable_name(name: str) -> ModelName:
    """The parsed name when it says where to push; InvalidRequest (400) for a bare local name."""
    mn = ModelName.parse(name)
    if "/" not in name or (mn.host == DEFAULT_HOST and mn.namespace == DEFAULT_NAMESPACE):
        raise InvalidRequest(f"cannot push '{name}': {NEEDS_REGISTRY_NAME}")
    if mn.host in HF_HOSTS:
        raise InvalidRequest(
            f"cannot push '{name}': Hugging Face is not an Ollama registry; {NEEDS_REGISTRY_NAME}"
        )
    return mn


def _blobs(store: Store, data: bytes, label: str) -> list[_Blob]:
    """The manifest's layers, then its config (Ollama's order), each with its file in the store."""
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise StoreError(f"the manifest of {label} is corrupt: {e}") from e
    entries: list[Any] = list(manifest.get("layers") or [])
    if manifest.get("config") is not None:
        entries.append(manifest["config"])
    blobs: list[_Blob] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise StoreError(f"the manifest of {label} has a malformed layer")
        digest = parse_digest(entry.get("digest"))
        path = store.blob_path(digest)  # BlobNotFound when it went missing
        size = os.stat(path).st_size
        if entry.get("size") != size:
            raise StoreError(
                f"blob {digest} of {label} is {size} bytes but its manifest says {entry.get('size')}"
            )
        if digest not in {b.digest for b in blobs}:
            blobs.append(_Blob(digest, size, path))
    return blobs


async def _registry_has(client: RegistryClient, url: str) -> bool:
    reply = await client.request("HEAD", url)
    if reply.status == 404:
        return False
    if 200 <= reply.status < 400:  # a 3xx points at the blob's storage: it exists
        return True
    raise UpstreamUnavailable(
        f"the registry answered HTTP {reply.status} when asked for blob {url.rsplit('/', 1)[-1]}"
        f"{': ' + error_text(reply.body) if reply.body else ''}"
    )


async def push_ollama(
    store: Store,
    name: str,
    *,
    progress: PushProgress | None = None,
    insecure: bool = False,
    chunk_size: int = 64 << 20,
    stall_timeout: float = 30.0,
) -> PushReport:
    """Push ``name`` from ``store`` to the registry its host names.

    ``insecure`` allows plain http to that host only (upload URLs on other hosts must be https).
    Credentials: none are configured for Ollama registries (pull reads none either); a registry's
    ``401`` Bearer challenge is answered with a token from its realm, as pulls do. Errors:
    InvalidName/InvalidRequest (400), ModelNotFound (404), BlobNotFound, StoreError,
    UpstreamUnavailable (the registry refused, or could not be reached after retries).
    """
    mn = pushable_name(name)
    emit = emitter(progress)
    await emit({"status": "retrieving manifest"})
    mn, data = store.manifest_bytes(mn)
    shown = mn.display
    blobs = _blobs(store, data, shown)
    host = (urlsplit(f"//{mn.host}").hostname or mn.host).lower()
    repo = f"{'http' if insecure else 'https'}://{mn.host}/v2/{mn.namespace}/{mn.model}"
    uploaded: list[str] = []
    skipped: list[str] = []
    sent = 0
    async with RegistryClient(
        auth=BearerAuth(), allow_http_hosts={host} if insecure else set(), stall_timeout=stall_timeout
    ) as client:
        for blob in blobs:

            async def report(completed: int, blob: _Blob = blob) -> None:
                await emit(
                    {"status": blob.status, "digest": blob.digest, "total": blob.size, "completed": completed}
                )

            try:
                exists = await _registry_has(client, f"{repo}/blobs/{blob.digest}")
            except TransientError as e:
                raise UpstreamUnavailable(f"cannot reach registry {mn.host}: {e}") from e
            if exists:
                skipped.append(blob.digest)
                await report(blob.size)
                continue
            await emit({"status": "starting upload", "digest": blob.digest, "total": blob.size})
            sent += await upload_blob(
                client, store, repo, blob.digest, blob.size, blob.path, progress=report, chunk_size=chunk_size
            )
            uploaded.append(blob.digest)

        await emit({"status": "pushing manifest"})
        media_type = json.loads(data).get("mediaType") or MANIFEST_MEDIA_TYPE
        try:
            reply = await client.request(
                "PUT",
                f"{repo}/manifests/{mn.tag}",
                headers={"Content-Type": media_type, "Content-Length": str(len(data))},
                body=_bytes_body(data),
            )
        except TransientError as e:
            raise UpstreamUnavailable(f"pushing the manifest of {shown} failed: {e}") from e
        if reply.status not in (200, 201, 202, 204):
            raise UpstreamUnavailable(
                f"registry {mn.host} refused the manifest of {shown} (HTTP {reply.status}):"
                f" {error_text(reply.body)}"
            )
    await emit({"status": "success"})
    return PushReport(mn, "sha256:" + hashlib.sha256(data).hexdigest(), uploaded, skipped, sent)


def _bytes_body(data: bytes) -> Callable[[], Any]:
    async def body() -> Any:
        yield data

    return body
