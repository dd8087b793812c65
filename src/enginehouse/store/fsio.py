"""Crash-safe file writing for the store: temp file, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p that fsyncs each parent that gained an entry, so a later rename inside survives a crash."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        fsync_dir(d.parent)


def atomic_write_bytes(path: Path, data: bytes, *, tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    The temporary file goes to ``tmp_dir`` (default: beside ``path``); it is fsynced, renamed over
    ``path`` and the directory is fsynced.
    """
    path = Path(path)
    make_dirs(path.parent)
    tdir = Path(tmp_dir) if tmp_dir is not None else path.parent
    make_dirs(tdir)
    fd, tmp = tempfile.mkstemp(dir=tdir, prefix=f".{path.name[:40]}.", suffix=".tmp")
    try:
        make_readable(fd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.replace(tmp, path)
        except OSError as e:
            if e.errno != errno.EXDEV or tmp_dir is None:
                raise
            # tmp_dir on another file system (a symlinked directory): retry beside the target.
            os.unlink(tmp)
            atomic_write_bytes(path, data)
            return
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def make_readable(fd: int) -> None:
    # mkstemp creates 0600 files; store files are shared like Ollama's (0644).
    with contextlib.suppress(OSError, AttributeError):
        os.fchmod(fd, 0o644)


def hash_file(path: Path | str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            size += n
    return "sha256:" + h.hexdigest(), size


class HashingWriter:
    """A binary file wrapper that hashes what is written through it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()
        self.size = 0
        self.digest: str | None = None  # set when the blob is committed

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self._fh.write(data)
        self._hash.update(data)
        self.size += len(data)
        return n

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
