"""Where entries live: an in-memory LRU bounded in bytes, or Redis.

A backend stores opaque bytes under a key with an optional TTL. It never raises on the request path:
a backend that fails answers ``get`` with None and drops ``set``, so a request is served uncached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from enginehouse.cache.stats import CacheStats
from enginehouse.errors import EnginehouseError

log = logging.getLogger("enginehouse.cache")

ENTRY_OVERHEAD = 96  # bytes counted per entry beyond key and value: the dict slot and bookkeeping


class CacheConfigError(EnginehouseError):
    """The cache cannot start as configured (bad URL, wrong Redis password): refused at start-up."""

    status = 500


class Backend(Protocol):
    name: str

    async def start(self) -> None:
        """Check the configuration; raises :class:`CacheConfigError` when it cannot work."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float | None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class MemoryBackend:
    """Least recently used entries go first once keys and values pass ``max_bytes``."""

    name = "memory"

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self._clock = clock
        self._items: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def _cost(key: str, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD

    async def start(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and self._clock() >= expires:
            self._remove(key)
            return None
        self._items.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        cost = self._cost(key, value)
        if cost > self.max_bytes:
            return  # would evict everything and still not fit
        self._remove(key)
        self._items[key] = (value, self._clock() + ttl if ttl else None)
        self.size_bytes += cost
        while self.size_bytes > self.max_bytes:
            oldest = next(iter(self._items))
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


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and logs (even a URL that does not parse)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not at or not colon:
        return url
    return urlunsplit((parts.scheme, f"{user}:***@{hostport}", parts.path, parts.query, parts.fragment))


class RedisBackend:
    """Redis (or any server of its protocol) by URL: ``redis://``, ``rediss://`` (TLS), ``unix://``.

    TLS options go in the query string as redis-py reads them (``?ssl_ca_certs=/path/ca.pem``). Every call
    is bounded by ``timeout``; a failure starts an outage: one warning, ``stats.outages`` counted, and
    Redis left alone for ``retry_after`` seconds before one call probes it again, so a dead or slow
    server costs requests nothing. The first call that succeeds ends the outage.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.25,
        retry_after: float = 1.0,
        prefix: str = "enginehouse:cache:",
        stats: CacheStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis.asyncio import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = redact(url)
        self.timeout = timeout
        self.retry_after = retry_after
        self.prefix = prefix
        self.stats = stats if stats is not None else CacheStats()
        self._clock = clock
        self._down_since: float | None = None
        self._next_try = 0.0
        try:
            self._client = Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),  # the bound is ours: no hidden retries behind it
            )
        except ValueError as exc:
            raise CacheConfigError(f"response cache: invalid Redis URL {self.url}: {exc}") from None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    async def start(self, timeout: float = 5.0) -> None:
        """Ping the server: a wrong password is a configuration error; an unreachable server only
        starts an outage (the gateway serves uncached until it is up)."""
        from redis.exceptions import AuthenticationError, RedisError, ResponseError

        try:
            async with asyncio.timeout(max(timeout, self.timeout)):
                await self._client.ping()
        except AuthenticationError as exc:
            raise CacheConfigError(
                f"response cache: Redis at {self.url} refused the credentials ({exc}); "
                "check the user and password in the URL"
            ) from None
        except ResponseError as exc:
            raise CacheConfigError(f"response cache: Redis at {self.url} refused PING: {exc}") from None
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
        else:
            log.info("response cache: Redis at %s", self.url)

    def _available(self) -> bool:
        if self._down_since is None:
            return True
        now = self._clock()
        if now < self._next_try:
            return False
        self._next_try = now + self.retry_after  # this call probes; the others keep skipping
        return True

    def _failed(self, exc: BaseException) -> None:
        self.stats.backend_errors += 1
        self._next_try = self._clock() + self.retry_after
        if self._down_since is None:
            self._down_since = self._clock()
            self.stats.outages += 1
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning(
                "response cache: Redis at %s is unavailable (%s); serving uncached until it is back",
                self.url,
                reason,
            )

    def _ok(self) -> None:
        if self._down_since is not None:
            log.info(
                "response cache: Redis at %s is back after %.1fs", self.url, self._clock() - self._down_since
            )
            self._down_since = None

    async def _run(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """The call's result, or None when Redis is skipped (outage), fails or is too slow."""
        from redis.exceptions import RedisError

        if not self._available():
            return None
        try:
            async with asyncio.timeout(self.timeout):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        self._ok()
        return result

    async def get(self, key: str) -> bytes | None:
        return await self._run(lambda: self._client.get(self.prefix + key))

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        px = max(1, int(ttl * 1000)) if ttl else None
        await self._run(lambda: self._client.set(self.prefix + key, value, px=px))

    async def delete(self, key: str) -> None:
        await self._run(lambda: self._client.delete(self.prefix + key))

    async def close(self) -> None:
        await self._client.aclose()
