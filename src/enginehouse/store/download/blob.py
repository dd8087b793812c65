"""One blob into the store: parallel byte ranges, resumed where an earlier attempt stopped, verified.

One blob is fetched as byte ranges over several connections, written with ``os.pwrite`` into a
sized file under ``<store>/partial/`` and hashed by a thread that follows the contiguous prefix of
what has arrived, so hashing overlaps the transfer even when parts land out of order. Only a blob
whose sha256 matches enters ``blobs/`` (fsynced, then renamed by the store); a mismatch deletes the
partial data. The resume record is written about once a second (see
:mod:`enginehouse.store.download.resume`); the final sha256 check stands between a partial file and
the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from enginehouse.errors import EnginehouseError, InvalidDigest, StoreError, UpstreamUnavailable
from enginehouse.store.download import tuning
from enginehouse.store.download.auth import error_text, shown_url
from enginehouse.store.download.hashing import Hasher
from enginehouse.store.download.http import NET_ERRORS, HttpSession, Response, TransientError
from enginehouse.store.download.resume import (
    Part,
    blob_lock,
    blob_paths,
    boot_id,
    layout,
    load_state,
    partial_dir,
    replace_atomically,
)
from enginehouse.store.fsio import atomic_write_bytes, make_dirs
from enginehouse.store.names import parse_digest
from enginehouse.store.store import Store

log = logging.getLogger(__package__)  # the logger of the module this package replaced

__all__ = ["ProgressFn", "download_blob", "run_all"]

ProgressFn = Callable[[int, int], Awaitable[None] | None]  # (completed, total)


class _RangesUnsupported(Exception):
    """The server answered a range request with the whole file."""


class _BlobJob:
    def __init__(
        self,
        store: Store,
        digest: str,
        size: int,
        url: str,
        http: HttpSession,
        progress: ProgressFn | None,
        part_size: int,
        connections: int,
    ) -> None:
        self.store, self.digest, self.size, self.url, self.http = store, digest, size, url, http
        self.progress, self.part_size, self.connections = progress, part_size, max(1, connections)
        self.data_path, self.state_path, _ = blob_paths(store, digest)
        self.parts: list[Part] = []
        self.fd = -1
        self.hasher: Hasher | None = None
        self.last_emit = 0.0
        self._io_lock = threading.Lock()  # record writes vs. closing the file
        self._closed = False

    # progress

    def completed(self) -> int:
        return sum(p.done for p in self.parts)

    async def emit(self) -> None:
        if self.progress is None:
            return
        self.last_emit = time.monotonic()
        r = self.progress(self.completed(), self.size)
        if inspect.isawaitable(r):
            await r

    # the resume record

    def _snapshot(self) -> list[list[int]]:
        return [[p.start, p.end, p.done] for p in self.parts]

    def _write_state_unlocked(self, snap: list[list[int]]) -> None:
        record = {"version": tuning.STATE_VERSION, "digest": self.digest, "size": self.size, "parts": snap}
        boot = boot_id()
        if boot is not None:
            # Trusted in this boot only: the page cache outlives the process, so no flush is needed.
            record["boot_id"] = boot
            replace_atomically(self.state_path, json.dumps(record).encode())
        else:
            (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(self.fd)  # data before the claim
            atomic_write_bytes(self.state_path, json.dumps(record).encode())

    def _write_state(self, snap: list[list[int]]) -> None:
        with self._io_lock:
            if not self._closed:
                self._write_state_unlocked(snap)

    async def _checkpointer(self) -> None:
        last = self._snapshot()
        while True:
            await asyncio.sleep(
                tuning.CHECKPOINT_INTERVAL if boot_id() else tuning.CHECKPOINT_INTERVAL_FLUSHED
            )
            snap = self._snapshot()
            if snap != last:
                try:
                    await asyncio.to_thread(self._write_state, snap)
                except OSError as e:  # the download goes on; only resuming it would lose ground
                    log.warning("cannot record the progress of blob %s: %s", self.digest, e)
                last = snap

    # running

    def _open(self) -> None:
        make_dirs(self.data_path.parent)
        for stale in self.data_path.parent.glob(f".{self.state_path.name[:40]}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()  # a record write cut short by a kill
        parts = load_state(self.data_path, self.state_path, self.digest, self.size)
        self.fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o644)
        if parts is None:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            os.ftruncate(self.fd, 0)
            os.ftruncate(self.fd, self.size)
            parts = layout(self.size, self.part_size)
        self.parts = parts

    def _discard(self) -> None:
        for p in (self.state_path, self.data_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    async def run(self) -> None:
        self._open()
        ckpt: asyncio.Task[None] | None = None
        verified_bad = False
        committed = False
        try:
            await self.emit()
            self.hasher = Hasher(self.fd, self.parts, self.size)
            ckpt = asyncio.create_task(self._checkpointer())
            try:
                await self._fetch_all()
            except _RangesUnsupported:
                # Start over as one plain stream (no range support means no resume either).
                self.hasher.stop()
                self.parts[:] = [Part(0, self.size)] if self.size else []
                self.hasher = Hasher(self.fd, self.parts, self.size)
                await self._fetch_all()
            await self.emit()
            got = "sha256:" + await self.hasher.result()
            if got != self.digest:
                verified_bad = True
                raise InvalidDigest(
                    f"blob {self.digest} failed verification: the downloaded data hashes to {got};"
                    " the partial download was deleted"
                )
            await asyncio.to_thread(self._fsync)
            self._commit()
            committed = True
        finally:
            if ckpt is not None:
                ckpt.cancel()
            if self.hasher is not None:
                self.hasher.stop()
            with self._io_lock:
                if not committed and not verified_bad and self.fd >= 0:
                    with contextlib.suppress(OSError):  # best effort: keep what has arrived
                        self._write_state_unlocked(self._snapshot())
                self._closed = True
                if self.fd >= 0:
                    os.close(self.fd)
                    self.fd = -1
                if verified_bad or committed:
                    self._discard()

    def _fsync(self) -> None:
        with self._io_lock:  # never while the file is being closed
            if not self._closed:
                os.fsync(self.fd)

    def _commit(self) -> None:
        try:
            # The store's own commit (rename into blobs/, fsync the directory): the data is already
            # verified and fsynced, so hashing it again through add_blob_from_file would be waste.
            self.store._commit_blob(self.data_path, self.digest)
        except OSError:  # blobs/ on another file system: copy (re-verified) instead of renaming
            self.store.add_blob_from_file(self.data_path, expected_digest=self.digest, link=False)
            with contextlib.suppress(FileNotFoundError):
                self.data_path.unlink()

    async def _fetch_all(self) -> None:
        todo = iter([p for p in self.parts if p.done < p.length])
        n = min(self.connections, sum(1 for p in self.parts if p.done < p.length))

        async def worker() -> None:
            for part in todo:
                await self._fetch_part(part)

        await run_all([worker() for _ in range(n)])

    async def _fetch_part(self, part: Part) -> None:
        failures = 0
        while part.done < part.length:
            before = part.done
            try:
                await self._stream(part)
                if part.done < part.length:
                    raise TransientError("the response ended early")
                return
            except TransientError as e:
                error: Exception = e
            except NET_ERRORS as e:
                error = self.http._net_error(self.url, e)
                if not isinstance(error, TransientError):
                    raise error from e
            failures = 0 if part.done > before else failures + 1
            if failures > tuning.RETRIES:
                raise UpstreamUnavailable(
                    f"downloading blob {self.digest} failed after {tuning.RETRIES} retries: {error};"
                    " what arrived is kept and the next pull resumes from there"
                ) from error
            await asyncio.sleep(min(tuning.BACKOFF_MAX, tuning.BACKOFF_BASE * 2 ** max(0, failures - 1)))

    async def _stream(self, part: Part) -> None:
        start, end = part.start + part.done, part.end
        whole = start == 0 and end == self.size
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={start}-{end - 1}"}
        resp = await self.http.open(self.url, headers)
        try:
            if resp.status == 200:
                if not whole:
                    raise _RangesUnsupported
            elif resp.status == 206:
                _check_content_range(resp.headers.get("content-range"), start, end, self.size, self.digest)
            elif resp.status == 429 or resp.status >= 500:
                raise TransientError(f"HTTP {resp.status} from {shown_url(resp.url)}")
            else:
                text = error_text(await resp.read(64 << 10))
                raise UpstreamUnavailable(
                    f"fetching blob {self.digest} from {shown_url(resp.url)} failed:"
                    f" HTTP {resp.status}: {text}"
                )
            encoding = resp.headers.get("content-encoding", "identity").lower()
            if encoding not in ("", "identity"):
                raise UpstreamUnavailable(
                    f"blob {self.digest} was sent {encoding}-encoded; expected raw bytes"
                )
            await self._receive(resp, part, start, end)
        finally:
            await resp.aclose()

    async def _receive(self, resp: Response, part: Part, off: int, end: int) -> None:
        fd, hasher = self.fd, self.hasher
        assert hasher is not None
        pwrite, monotonic, poke = os.pwrite, time.monotonic, hasher.poke
        async for chunk in resp.chunks():
            n = len(chunk)
            if off + n > end:
                raise UpstreamUnavailable(f"the server sent more bytes than blob {self.digest} has")
            try:
                written = pwrite(fd, chunk, off)
                while written < n:  # rare: short writes on regular files
                    written += pwrite(fd, memoryview(chunk)[written:], off + written)
            except OSError as e:
                raise StoreError(f"cannot write blob {self.digest}: {e.strerror or 'write failed'}") from e
            off += n
            part.done = off - part.start
            poke()
            if monotonic() - self.last_emit >= tuning.PROGRESS_INTERVAL:
                await self.emit()


def _check_content_range(value: str | None, start: int, end: int, size: int, digest: str) -> None:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m or int(m.group(1)) != start or int(m.group(2)) != end - 1:
        raise UpstreamUnavailable(
            f"blob {digest}: the server answered range {start}-{end - 1} with Content-Range {value!r}"
        )
    if m.group(3) != "*" and int(m.group(3)) != size:
        raise InvalidDigest(
            f"blob {digest}: the server holds {m.group(3)} bytes but the manifest says {size}"
        )


async def run_all(coros: list[Awaitable[Any]]) -> list[Any]:
    """Run concurrently; on the first failure cancel the rest, wait for them, re-raise that failure."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def download_blob(
    store: Store,
    digest: str,
    size: int,
    url: str,
    http: HttpSession,
    *,
    progress: ProgressFn | None = None,
    part_size: int = 64 << 20,
    connections: int = tuning.CONNECTIONS_PER_BLOB,
) -> None:
    """Put blob ``digest`` (``size`` bytes, served at ``url``) into ``store``, verified.

    Ranges of ``part_size`` bytes are fetched over up to ``connections`` connections; a partial
    download from an earlier attempt is resumed. ``progress(completed, total)`` (sync or async) is
    called at the start, at most every PROGRESS_INTERVAL while bytes arrive, and once at the end.
    Raises InvalidDigest (data does not match; partial data deleted), UpstreamUnavailable (network
    gave up; partial data kept for resume), StoreError (local disk).
    """
    d = parse_digest(digest)
    if type(size) is not int or size < 0:
        raise InvalidDigest(f"blob {d}: invalid size {size!r}")

    async def report_present() -> None:
        if progress is not None:
            r = progress(size, size)
            if inspect.isawaitable(r):
                await r

    if store.has_blob(d):
        await report_present()
        return
    make_dirs(partial_dir(store))
    async with blob_lock(blob_paths(store, d)[2]):
        if store.has_blob(d):  # another pull finished it while we waited
            await report_present()
            return
        try:
            await _BlobJob(store, d, size, url, http, progress, part_size, connections).run()
        except EnginehouseError:
            raise
        except OSError as e:
            raise StoreError(f"downloading blob {d}: {e.strerror or 'write failed'}") from e
