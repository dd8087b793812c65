"""sha256 of a partial download, computed while it arrives."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading

from enginehouse.errors import StoreError
from enginehouse.store.download import tuning
from enginehouse.store.download.resume import Part

__all__ = ["Hasher"]


class Hasher:
    """sha256 of the partial file, computed in a thread that follows the contiguous prefix of
    completed bytes (part i's bytes count once every part before it is complete up to there)."""

    def __init__(self, fd: int, parts: list[Part], size: int) -> None:
        self._fd, self._parts, self._size = fd, parts, size
        self._wake = threading.Event()
        self._stop = False
        self.hexdigest: str | None = None
        self.error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="blob-hash", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        try:
            h = hashlib.sha256()
            buf = bytearray(tuning.HASH_BUF)
            view = memoryview(buf)
            pos, i, parts = 0, 0, self._parts
            while pos < self._size:
                if self._stop:
                    return
                while pos >= parts[i].end:
                    i += 1
                self._wake.clear()
                avail = parts[i].start + parts[i].done
                if pos >= avail:
                    self._wake.wait(0.05)
                    continue
                n = os.preadv(self._fd, [view[: min(tuning.HASH_BUF, avail - pos)]], pos)
                if n <= 0:
                    raise StoreError("the partial download shrank while it was being hashed")
                h.update(view[:n])
                pos += n
            self.hexdigest = h.hexdigest()
        except BaseException as e:
            self.error = e
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may be gone at interpreter exit
                self._loop.call_soon_threadsafe(lambda: self._done.done() or self._done.set_result(None))

    async def result(self) -> str:
        self.poke()
        await asyncio.shield(self._done)
        if self.error is not None:
            raise self.error
        assert self.hexdigest is not None
        return self.hexdigest

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()
