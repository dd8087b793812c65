"""One blob to a registry: the OCI distribution upload flow, resumable from the registry's own count.

    POST  {repo}/blobs/uploads/                    -> 202, Location: the upload session
    PATCH {session}  Content-Range: a-b  (chunk)   -> 202, Location (the next), Range: 0-b
    GET   {session}                                -> 204, Range: 0-n   (how much it holds)
    PUT   {session}?digest=sha256:...  [last bytes]  -> 201: the registry checked the digest

A blob no larger than one chunk goes in a single ``PUT`` after the ``POST``; a larger one in ``PATCH``
chunks and an empty ``PUT``. When a request fails (the connection drops, stalls, or the registry
answers 5xx) the registry is asked how much of the session it holds (``GET``, its ``Range``) and the
upload goes on from there; a session it no longer knows starts over. The session URL is kept in
``<store>/partial/push-<digest>-<repo>.json`` until the blob is complete, so a push that was
interrupted (the process killed included) picks the same session up next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote, urljoin

from enginehouse.errors import UpstreamUnavailable
from enginehouse.store.download import tuning
from enginehouse.store.download.auth import error_text
from enginehouse.store.download.resume import blob_lock, partial_dir, replace_atomically
from enginehouse.store.fsio import make_dirs
from enginehouse.store.store import Store
from enginehouse.store.upload.client import Body, RegistryClient, Reply, TransientError

__all__ = ["upload_blob"]

ProgressFn = Callable[[int], Awaitable[None]]  # (completed)
_RANGE_RE = re.compile(r"(?:bytes=)?0-(\d+)")
_PIECE = 1 << 20


class _Refused(Exception):
    """The registry refused a step in a way a fresh session may cure (unknown session, bad range)."""


def _record_path(store: Store, repo_url: str, digest: str) -> Path:
    repo = hashlib.sha256(repo_url.encode()).hexdigest()[:16]
    return partial_dir(store) / f"push-{digest.removeprefix('sha256:')}-{repo}.json"


def _load_session(path: Path, repo_url: str, digest: str, size: int) -> str | None:
    try:
        rec = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    ok = isinstance(rec, dict) and rec.get("repo") == repo_url and rec.get("digest") == digest
    ok = ok and rec.get("size") == size and isinstance(rec.get("location"), str)
    return rec["location"] if ok else None


def _held(reply: Reply) -> int:
    """Bytes the registry holds, from ``Range: 0-<last byte>``; ``0-0`` is read as none (Docker's
    registry says ``0-0`` for an empty session; a one-byte one then fails its next range and restarts)."""
    m = _RANGE_RE.fullmatch(reply.headers.get("range", "").strip())
    if not m:
        return 0
    last = int(m.group(1))
    return 0 if last == 0 else last + 1


def _file_pieces(path: Path, start: int, end: int, sent: list[int]) -> Body:
    async def body() -> AsyncIterator[bytes]:
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        try:
            off = start
            while off < end:
                data = await asyncio.to_thread(os.pread, fd, min(_PIECE, end - off), off)
                if not data:
                    raise UpstreamUnavailable(f"the blob file shrank while it was being pushed ({path.name})")
                off += len(data)
                sent[0] = off
                yield data
        finally:
            os.close(fd)

    return body


class _Upload:
    def __init__(
        self,
        client: RegistryClient,
        store: Store,
        repo_url: str,
        digest: str,
        size: int,
        path: Path,
        progress: ProgressFn,
        chunk_size: int,
    ) -> None:
        self.client, self.repo_url, self.digest, self.size, self.path = client, repo_url, digest, size, path
        self.progress, self.chunk_size = progress, max(1, chunk_size)
        self.record = _record_path(store, repo_url, digest)
        self.location: str | None = None
        self.offset = 0
        self.sent_bytes = 0  # bytes of this blob sent in this run (resumed bytes are not sent again)

    def _save(self) -> None:
        make_dirs(self.record.parent)
        rec = {"repo": self.repo_url, "digest": self.digest, "size": self.size, "location": self.location}
        replace_atomically(self.record, json.dumps(rec).encode())

    def _forget(self) -> None:
        self.location = None
        with contextlib.suppress(OSError):
            os.unlink(self.record)

    def _follow(self, reply: Reply) -> None:
        location = reply.headers.get("location")
        if location:
            self.location = urljoin(reply.url, location)
            self._save()

    async def _start(self) -> None:
        reply = await self.client.request("POST", f"{self.repo_url}/blobs/uploads/")
        if reply.status not in (201, 202) or not reply.headers.get("location"):
            raise UpstreamUnavailable(
                f"the registry refused to start an upload (HTTP {reply.status}): {error_text(reply.body)}"
            )
        self.offset = 0
        self._follow(reply)

    async def _query(self) -> None:
        """Ask the registry how much of the session it holds; a session it forgot is dropped."""
        assert self.location is not None
        reply = await self.client.request("GET", self.location)
        if reply.status not in (200, 204):
            self._forget()
            return
        self.offset = min(_held(reply), self.size)
        self._follow(reply)

    async def _send(self, method: str, start: int, end: int, url: str) -> Reply:
        sent = [start]
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(end - start)}
        if method == "PATCH":
            headers["Content-Range"] = f"{start}-{end - 1}"
        task = asyncio.ensure_future(
            self.client.request(
                method,
                url,
                headers=headers,
                body=_file_pieces(self.path, start, end, sent) if end > start else None,
                # the registry may hash what it holds before it answers the final PUT
                reply_timeout=max(self.client.stall_timeout, 300.0) if method == "PUT" else None,
            )
        )
        last = start
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=tuning.PROGRESS_INTERVAL)
                if sent[0] != last:
                    last = sent[0]
                    await self.progress(last)
            return task.result()
        finally:
            self.sent_bytes += sent[0] - start
            if not task.done():
                task.cancel()

    async def _step(self) -> bool:
        """Send the next chunk, or finish; True once the registry has the blob."""
        assert self.location is not None
        if self.offset < self.size and not (self.offset == 0 and self.size <= self.chunk_size):
            end = min(self.size, self.offset + self.chunk_size)
            reply = await self._send("PATCH", self.offset, end, self.location)
            if reply.status == 416 or reply.status == 404:
                raise _Refused(f"HTTP {reply.status}: {error_text(reply.body)}")
            if reply.status not in (200, 202, 204):
                raise UpstreamUnavailable(
                    f"the registry refused a chunk of {self.digest} (HTTP {reply.status}):"
                    f" {error_text(reply.body)}"
                )
            self.offset = end
            self._follow(reply)
            return False
        sep = "&" if "?" in self.location else "?"
        url = f"{self.location}{sep}digest={quote(self.digest, safe=':')}"
        reply = await self._send("PUT", self.offset, self.size, url)
        if reply.status in (200, 201, 204):
            return True
        if reply.status in (400, 404, 416):
            raise _Refused(f"HTTP {reply.status}: {error_text(reply.body)}")
        raise UpstreamUnavailable(
            f"the registry refused blob {self.digest} (HTTP {reply.status}): {error_text(reply.body)}"
        )

    async def run(self, resume: str | None) -> None:
        self.location = resume
        if self.location is not None:
            await self._query()
        failures = refusals = 0
        while True:
            if self.location is None:
                await self._start()
            await self.progress(self.offset)
            before = self.offset
            try:
                if await self._step():
                    self._forget()
                    return
                failures = 0
            except _Refused as e:
                refusals += 1
                if refusals > 1:
                    raise UpstreamUnavailable(f"the registry refused the upload of {self.digest}: {e}") from e
                self._forget()  # a fresh session, once
            except TransientError as e:
                failures += 1
                if failures > tuning.RETRIES:
                    raise UpstreamUnavailable(
                        f"pushing blob {self.digest} failed after {tuning.RETRIES} retries: {e};"
                        " the next push resumes from what the registry holds"
                    ) from e
                await asyncio.sleep(min(tuning.BACKOFF_MAX, tuning.BACKOFF_BASE * 2 ** max(0, failures - 1)))
                with contextlib.suppress(TransientError):
                    await self._query()
                if self.offset > before:  # the registry kept bytes of the failed request: progress
                    failures = 0


async def upload_blob(
    client: RegistryClient,
    store: Store,
    repo_url: str,
    digest: str,
    size: int,
    path: Path,
    *,
    progress: ProgressFn,
    chunk_size: int = 64 << 20,
) -> int:
    """Upload the blob at ``path`` to ``repo_url`` (``.../v2/<ns>/<model>``); returns the bytes sent in
    this call. The caller has already asked (``HEAD``) whether the registry has it."""
    job = _Upload(client, store, repo_url, digest, size, path, progress, chunk_size)
    make_dirs(job.record.parent)
    async with blob_lock(job.record.with_suffix(".lock")):
        await job.run(_load_session(job.record, repo_url, digest, size))
    await progress(size)
    return job.sent_bytes
