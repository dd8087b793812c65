"""The facade the routes call: plan a request, look it up, record the answer on a miss, store it.

    plan = cache.plan(CacheRequest(...), request.headers)   # None: not cacheable, go to the engine
    entry = await cache.lookup(plan)                         # a hit: replay it
    recorder = cache.recorder(plan, content_type)            # a miss: feed it what the door writes
    cache.keep(plan, recorder)                               # after the last byte: store in the background

Per request, the client can say ``Cache-Control: no-cache`` (do not answer from the cache; the fresh
answer is still stored), ``no-store`` (neither), ``max-age=N`` (only an entry younger than N seconds
answers) and ``X-Enginehouse-Cache-TTL: SECONDS`` (how long this answer is kept; 0: not at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from enginehouse.cache.backends import Backend, MemoryBackend, RedisBackend
from enginehouse.cache.key import Door, cache_key, is_deterministic, scope_for, streams
from enginehouse.cache.record import CorruptEntry, Entry, Framing, Recorder, decode, encode
from enginehouse.cache.stats import CacheStats
from enginehouse.config_cache import CacheSettings

log = logging.getLogger("enginehouse.cache")

CACHE_HEADER = "X-Enginehouse-Cache"  # hit | miss, on every answer the cache looked up
TTL_HEADER = "X-Enginehouse-Cache-TTL"


@dataclass(frozen=True, slots=True)
class Controls:
    """What the client asked of the cache for one request."""

    lookup: bool = True
    store: bool = True
    ttl: float | None = None  # None: the configured default
    max_age: float | None = None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and not hasattr(headers, "getall"):  # a plain dict: match case-insensitively
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def controls_from_headers(headers: Mapping[str, str]) -> Controls:
    lookup = store = True
    max_age = ttl = None
    for directive in (_header(headers, "Cache-Control") or "").lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name == "no-store":
            lookup = store = False
        elif name == "no-cache":
            lookup = False
        elif name == "max-age":
            max_age = _seconds(value.strip('" '))
    if (raw := _header(headers, TTL_HEADER)) is not None:
        ttl = _seconds(raw.strip())
        if ttl == 0:
            store = False
    return Controls(lookup, store, ttl, max_age)


@dataclass(frozen=True, slots=True)
class CacheRequest:
    """What a route knows about a request once it is routed, before any engine sees it.

    ``body`` is the client's JSON as received (before the door normalises it). ``model_digest`` is the
    digest of the model that will answer and ``template_digest`` that of its chat template;
    ``instance`` holds whatever else about the runner can change the answer (engine, context per slot,
    flags, KV-cache types, remote upstream and model). ``model_params`` are the model's Modelfile
    PARAMETERs, read only to tell whether the request is deterministic.
    """

    door: Door
    endpoint: str
    body: Mapping[str, Any]
    model_digest: str
    template_digest: str = ""
    instance: Mapping[str, Any] = field(default_factory=dict)
    api_key: str | None = None
    model_params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CachePlan:
    key: str
    framing: Framing
    lookup: bool
    store: bool
    ttl: float | None
    max_age: float | None = None


class ResponseCache:
    def __init__(
        self, settings: CacheSettings, backend: Backend | None = None, stats: CacheStats | None = None
    ) -> None:
        self.settings = settings
        self.stats = stats if stats is not None else CacheStats()
        self.backend = backend if backend is not None else make_backend(settings, self.stats)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Raises :class:`CacheConfigError` when the backend cannot work as configured (wrong Redis
        password); an unreachable Redis only starts an outage."""
        await self.backend.start()

    async def close(self) -> None:
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.backend.close()

    def plan(self, req: CacheRequest, headers: Mapping[str, str] | None = None) -> CachePlan | None:
        """The cache's plan for this request, or None when the cache stays out of it."""
        if not self.settings.enabled:
            return None
        controls = controls_from_headers(headers or {})
        cacheable = self.settings.nondeterministic or is_deterministic(
            req.door, req.endpoint, req.body, req.model_params
        )
        if not cacheable or not (controls.lookup or controls.store):
            self.stats.bypassed += 1
            return None
        shared = self.settings.shared or req.body.get("model") in self.settings.shared_models
        key = cache_key(
            req.door,
            req.endpoint,
            req.body,
            model_digest=req.model_digest,
            template_digest=req.template_digest,
            instance=req.instance,
            scope="" if shared else scope_for(req.api_key),
        )
        if key is None:
            self.stats.bypassed += 1
            return None
        if not streams(req.door, req.endpoint, req.body):
            framing = Framing.JSON
        else:
            framing = Framing.NDJSON if req.door == "ollama" else Framing.SSE
        ttl = controls.ttl if controls.ttl is not None else (self.settings.ttl_s or None)
        return CachePlan(key, framing, controls.lookup, controls.store, ttl, controls.max_age)

    async def lookup(self, plan: CachePlan) -> Entry | None:
        """The stored answer, or None (a miss; so is an undecodable, stale or unreachable one)."""
        if not plan.lookup:
            self.stats.bypassed += 1
            return None
        blob = await self.backend.get(plan.key)
        entry = self._decode(plan, blob) if blob is not None else None
        if entry is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return entry

    def _decode(self, plan: CachePlan, blob: bytes) -> Entry | None:
        try:
            entry = decode(blob)
        except CorruptEntry as exc:
            self.stats.corrupt += 1
            log.debug("response cache: entry %s undecodable (%s): a miss", plan.key[:12], exc)
            return None
        if entry.framing is not plan.framing:
            return None
        if plan.max_age is not None and time.time() - entry.stored_at > plan.max_age:
            return None
        return entry

    def recorder(self, plan: CachePlan, content_type: str) -> Recorder | None:
        """A recorder for the answer of a miss, or None when the plan does not store it."""
        if not plan.store:
            return None
        return Recorder(plan.framing, content_type, self.settings.max_entry_kib * 1024)

    async def store(self, plan: CachePlan, entry: Entry) -> None:
        if not plan.store:
            return
        await self.backend.set(plan.key, encode(entry), plan.ttl)
        self.stats.stores += 1

    def keep(self, plan: CachePlan, recorder: Recorder | None, status: int = 200) -> None:
        """Store what ``recorder`` saw, in the background, if it is a whole answer worth keeping.
        Call it after the answer's last byte was written, never after an error."""
        if recorder is None or (entry := recorder.finish(status)) is None:
            return
        task = asyncio.get_running_loop().create_task(self.store(plan, entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def make_backend(settings: CacheSettings, stats: CacheStats) -> Backend:
    if settings.is_redis:
        return RedisBackend(
            settings.url,
            timeout=settings.timeout_ms / 1000,
            retry_after=settings.retry_s,
            prefix=settings.key_prefix,
            stats=stats,
        )
    return MemoryBackend(int(settings.memory_mib * 1024 * 1024))
