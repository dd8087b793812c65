"""Uploads to ``/api/blobs/{digest}``: streamed into the store within a size bound and the disk's room.

The size bound (``ENGINEHOUSE_MAX_BLOB_MIB``) is checked against Content-Length before a byte is read and
again while the body streams (a chunked upload declares nothing). Free disk is checked up front for the
declared size and every few MiB while writing, keeping :data:`DISK_MARGIN` free for the rest of the system.
The store writes under tmp/ and renames when the digest matches, so a refused, failed, stalled or abandoned
upload leaves nothing behind (:meth:`enginehouse.store.Store.blob_writer` removes the partial file).
"""

from __future__ import annotations

import asyncio
import errno
import shutil

from aiohttp import web

from enginehouse.config import Config
from enginehouse.errors import InsufficientStorage, RequestTooLarge
from enginehouse.sched.memory import MiB
from enginehouse.server.bodies import read_chunk
from enginehouse.store import Store

__all__ = ["DISK_MARGIN", "receive_blob"]

CHUNK = 1 * MiB
DISK_MARGIN = 256 * MiB  # left free on the store's disk whatever an upload needs
CHECK_EVERY = 64 * MiB  # free space is looked at again after this much was written


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def ensure_room(store: Store, needed: int) -> None:
    """InsufficientStorage unless the store's disk has ``needed`` bytes free beyond the margin."""
    probe = store.root
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + DISK_MARGIN:
        raise InsufficientStorage(
            f"not enough disk space for this upload: it needs {_mib(needed)} with {_mib(DISK_MARGIN)} kept "
            f"free, and {_mib(free)} is free"
        )


async def receive_blob(request: web.Request, store: Store, digest: str, config: Config) -> None:
    """Stream the request body into the store as ``digest``; raise on any bound, leaving nothing."""
    limit = config.max_blob_mib * MiB
    too_large = f"blob too large: the limit is {config.max_blob_mib} MiB (ENGINEHOUSE_MAX_BLOB_MIB)"
    declared = request.content_length
    if limit and declared is not None and declared > limit:
        raise RequestTooLarge(too_large)
    ensure_room(store, declared or 0)
    loop = asyncio.get_running_loop()
    try:
        with store.blob_writer(expected_digest=digest) as writer:
            unchecked = 0
            while chunk := await read_chunk(request, CHUNK, config.body_timeout):
                if limit and writer.size + len(chunk) > limit:
                    raise RequestTooLarge(too_large)
                unchecked += len(chunk)
                if unchecked >= CHECK_EVERY:
                    ensure_room(store, CHECK_EVERY)
                    unchecked = 0
                await loop.run_in_executor(None, writer.write, chunk)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage("not enough disk space for this upload: the disk filled up") from None
        raise
