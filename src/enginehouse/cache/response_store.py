"""Stored ``/v1/responses`` answers, for ``previous_response_id`` and ``GET``/``DELETE /v1/responses/{id}``.

An entry is one response object with the conversation that led to it (the items before its input, and
its input items), so a follow-up reads one entry and never walks a chain that may have lost a link.

Where entries live:

- **memory** (the default): bounded in entries, bytes and age (``ENGINEHOUSE_RESPONSES_MAX_ENTRIES``,
  ``..._MAX_MIB``, ``..._TTL``). At a bound the oldest entries are dropped first; a dropped, expired or
  deleted id answers 404 like one never stored. An entry larger than the byte bound is not kept.
- **Redis**, when the response cache is configured with a Redis URL: the same server and connection
  settings, keys under ``enginehouse:responses:``, each with the age bound as its TTL (Redis's own
  ``maxmemory`` policy bounds the size). While Redis is unreachable a lookup is answered as unavailable
  (503), not as a missing entry, and a write is lost.

Entries are scoped by the caller's API key (a hash of it, as the response cache does), so one key
cannot read, chain from or delete another's responses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from enginehouse.cache.backends import RedisBackend
from enginehouse.cache.key import scope_for
from enginehouse.config_cache import CacheSettings

log = logging.getLogger("enginehouse.responses")

REDIS_PREFIX = "enginehouse:responses:"


@dataclass(frozen=True, slots=True)
class StoreBounds:
    max_entries: int = 1000
    max_bytes: int = 64 * 1024 * 1024
    ttl_s: float = 86400.0

    def describe(self) -> str:
        return f"{self.max_entries} entries, {self.max_bytes // (1024 * 1024)} MiB, {self.ttl_s:g}s"


class _Backend(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: float | None) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def close(self) -> None: ...


class MemoryResponses:
    """Insertion order is age order: the oldest entry is first, so bounds and expiry drop from the front."""

    name = "memory"

    def __init__(self, bounds: StoreBounds, clock: Callable[[], float] = time.monotonic) -> None:
        self.bounds = bounds
        self.size_bytes = 0
        self.dropped = 0  # entries dropped at a bound (not expired, not deleted)
        self._clock = clock
        self._items: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def _cost(key: str, value: bytes) -> int:
        return len(key) + len(value)

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if self._clock() - item[1] >= self.bounds.ttl_s:
            self._remove(key)
            return None
        return item[0]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        cost = self._cost(key, value)
        if cost > self.bounds.max_bytes:
            log.warning("a response of %d bytes is over the store's bound and was not kept", cost)
            return
        self._remove(key)
        now = self._clock()
        self._items[key] = (value, now)
        self.size_bytes += cost
        while self._items:
            oldest, (_, stored_at) = next(iter(self._items.items()))
            expired = now - stored_at >= self.bounds.ttl_s
            over = len(self._items) > self.bounds.max_entries or self.size_bytes > self.bounds.max_bytes
            if not (expired or over):
                break
            self.dropped += not expired
            self._remove(oldest)

    async def delete(self, key: str) -> None:
        self._remove(key)

    def _remove(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.size_bytes -= self._cost(key, item[0])

    async def close(self) -> None:
        self._items.clear()
        self.size_bytes = 0


class StoreUnavailable(Exception):
    """The backend (Redis) did not answer; the route says so instead of 'not found'."""


class ResponseStore:
    def __init__(self, backend: _Backend, bounds: StoreBounds) -> None:
        self.backend = backend
        self.bounds = bounds
        self._pending: dict[str, asyncio.Task[None]] = {}  # writes not finished yet, by key

    @classmethod
    def build(cls, bounds: StoreBounds, cache: CacheSettings | None = None) -> ResponseStore:
        """In Redis when the response cache uses Redis (its URL and timeouts), else in memory."""
        if cache is not None and cache.enabled and cache.is_redis:
            backend: _Backend = RedisBackend(
                cache.url, timeout=cache.timeout_ms / 1000, retry_after=cache.retry_s, prefix=REDIS_PREFIX
            )
        else:
            backend = MemoryResponses(bounds)
        return cls(backend, bounds)

    @staticmethod
    def key(api_key: str | None, response_id: str) -> str:
        return f"{scope_for(api_key) or 'open'}:{response_id}"

    async def put(self, api_key: str | None, response_id: str, entry: dict[str, Any]) -> None:
        await self.backend.set(self.key(api_key, response_id), orjson.dumps(entry), self.bounds.ttl_s)

    def put_soon(self, api_key: str | None, response_id: str, entry: dict[str, Any]) -> None:
        """Store in the background; a lookup of the same id waits for it, so a client that read the
        last event and asks at once finds the entry."""
        key = self.key(api_key, response_id)
        task = asyncio.get_running_loop().create_task(self.put(api_key, response_id, entry))
        self._pending[key] = task
        task.add_done_callback(lambda _: self._pending.pop(key, None))

    async def get(self, api_key: str | None, response_id: str) -> dict[str, Any] | None:
        """The entry, or None. Raises :class:`StoreUnavailable` when Redis did not answer."""
        key = self.key(api_key, response_id)
        if (pending := self._pending.get(key)) is not None:
            await asyncio.shield(pending)
        blob = await self.backend.get(key)
        if blob is None:
            if getattr(self.backend, "down", False):
                raise StoreUnavailable()
            return None
        try:
            entry = orjson.loads(blob)
        except orjson.JSONDecodeError:
            return None
        return entry if isinstance(entry, dict) else None

    async def delete(self, api_key: str | None, response_id: str) -> bool:
        """Whether there was an entry to delete."""
        if await self.get(api_key, response_id) is None:
            return False
        await self.backend.delete(self.key(api_key, response_id))
        return True

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending.values(), return_exceptions=True)
        await self.backend.close()
