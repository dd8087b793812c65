"""The partial file of a blob download and its resume record.

``partial/sha256-<hex>.partial`` holds the bytes and ``partial/sha256-<hex>.json`` records how far
each range got. The record is replaced atomically and claims only bytes already written, so a
process killed at any moment (kill -9 included) leaves a record that is true (the page cache
outlives the process); the next attempt fetches only the rest. A record carries the boot id and is
not trusted after a reboot (a crash may have lost unflushed data); where there is no boot id, the
data is fdatasynced before each record instead. Concurrent downloads of one blob (two pulls, two
processes) are serialised with a lock file ``partial/sha256-<hex>.lock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from enginehouse.store.download import tuning
from enginehouse.store.names import digest_filename
from enginehouse.store.store import Store

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process lock, the rest still works
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "Part",
    "blob_lock",
    "blob_paths",
    "boot_id",
    "layout",
    "load_state",
    "partial_dir",
    "replace_atomically",
]


def partial_dir(store: Store) -> Path:
    return store.root / "partial"


@dataclass
class Part:
    start: int
    end: int  # exclusive
    done: int = 0  # bytes written from start (only ever grows while a job runs)

    @property
    def length(self) -> int:
        return self.end - self.start


def layout(size: int, part_size: int) -> list[Part]:
    if size <= 0:
        return []
    n = max(1, math.ceil(size / max(1, part_size)))
    bounds = [size * i // n for i in range(n + 1)]
    return [Part(bounds[i], bounds[i + 1]) for i in range(n)]


def blob_paths(store: Store, digest: str) -> tuple[Path, Path, Path]:
    base = partial_dir(store) / digest_filename(digest)
    return base.with_suffix(".partial"), base.with_suffix(".json"), base.with_suffix(".lock")


def load_state(data_path: Path, state_path: Path, digest: str, size: int) -> list[Part] | None:
    """The recorded ranges when record and partial file agree with each other and with the blob."""
    try:
        state = json.loads(state_path.read_bytes())
        if data_path.stat().st_size != size:
            return None
    except (OSError, ValueError):
        return None
    if not (
        isinstance(state, dict)
        and state.get("boot_id") in (None, boot_id())  # a record from before a crash claims too much
        and state.get("version") == tuning.STATE_VERSION
        and state.get("digest") == digest
        and state.get("size") == size
        and isinstance(state.get("parts"), list)
    ):
        return None
    parts: list[Part] = []
    pos = 0
    for item in state["parts"]:
        if not (isinstance(item, list) and len(item) == 3 and all(type(x) is int for x in item)):
            return None
        start, end, done = item
        if start != pos or end <= start or not 0 <= done <= end - start:
            return None
        parts.append(Part(start, end, done))
        pos = end
    if pos != size:
        return None
    return parts


_BOOT_ID: list[str | None] = []


def boot_id() -> str | None:
    """This boot's id (Linux), or None where the system has none to offer."""
    if not _BOOT_ID:
        try:
            _BOOT_ID.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None)
        except OSError:
            _BOOT_ID.append(None)
    return _BOOT_ID[0]


def replace_atomically(path: Path, data: bytes) -> None:
    """Write beside ``path`` and rename over it: readers see the old or the new file, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.asynccontextmanager
async def blob_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive flock on ``path`` (polled, so the event loop keeps running while waiting)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            await asyncio.sleep(0.1)
            continue
        try:  # the holder before us may have removed the file: then lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
