"""When a request may go to its model: the anti-thrash rule, kept apart from loading and memory.

With memory for one model at a time, serving requests in arrival order swaps on every change of model
(A, B, A, B... costs a load each). The ``batch`` policy serves the loaded model's requests first, and a
request for another model waits for the loaded one to drain; the fairness bound caps that wait: once a
waiting load is older than the bound, the models it waits for take no new requests until it is done, so
no request waits much longer than the bound plus the longest request already running.

``fifo`` admits strictly in arrival order. It is the naive baseline the benchmark compares against,
selectable with ``ENGINEHOUSE_SCHED_POLICY=fifo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, policy: str = "batch", fairness_s: float = 10.0) -> None:
        if policy not in ("batch", "fifo"):
            raise ValueError(f"unknown scheduling policy {policy!r}")
        self.policy = policy
        self.fairness_s = fairness_s
        self._tail: asyncio.Future[None] | None = None  # fifo: the admission of the latest arrival
        self._starving: dict[str, frozenset[str]] = {}  # waiting key -> the keys it waits to drain
        self._changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        """Hold the request until it may be admitted; leaving the block means admitted (or failed)."""
        mine: asyncio.Future[None] | None = None
        if self.policy == "fifo":
            prev, mine = self._tail, asyncio.get_running_loop().create_future()
            self._tail = mine
            if prev is not None and not prev.done():
                try:
                    await asyncio.shield(prev)
                except BaseException:
                    mine.set_result(None)
                    raise
        try:
            while self.held(key):
                self._changed.clear()
                await self._changed.wait()
            yield
        finally:
            if mine is not None and not mine.done():
                mine.set_result(None)

    def held(self, key: str) -> bool:
        """Whether new requests for ``key`` must wait: a load older than the bound waits for it."""
        return any(key in waits for waiter, waits in self._starving.items() if waiter != key)

    def waiting(self, key: str, since: float, wait_for: Iterable[str]) -> None:
        """A load of ``key`` (asked for at monotonic ``since``) waits for ``wait_for`` to drain."""
        if key in self._starving or time.monotonic() - since < self.fairness_s:
            return
        self._starving[key] = frozenset(wait_for)
        log.info(
            "%s has waited %.1fs (fairness bound): %s take no new requests until it is loaded",
            key,
            time.monotonic() - since,
            ", ".join(sorted(wait_for)),
        )

    def done(self, key: str) -> None:
        """The load of ``key`` finished (or failed): release whatever it held back."""
        if self._starving.pop(key, None) is not None:
            self._changed.set()
