"""Resumable blob uploads to an OCI/Docker-v2 registry, the push side of :mod:`enginehouse.store.download`.

- :mod:`~enginehouse.store.upload.client`: :class:`RegistryClient` (aiohttp; any method; Bearer
  challenges through the pull's :class:`~enginehouse.store.download.auth.BearerAuth`; stall detection
  while a body goes out);
- :mod:`~enginehouse.store.upload.blob`: :func:`upload_blob`, one blob in chunks, resumed from the
  registry's reported range, its session kept across runs.

Retries and back-off use the download tunables (:mod:`enginehouse.store.download.tuning`).
"""

from __future__ import annotations

from enginehouse.store.upload.blob import upload_blob
from enginehouse.store.upload.client import RegistryClient, Reply, TransientError

__all__ = ["RegistryClient", "Reply", "TransientError", "upload_blob"]
