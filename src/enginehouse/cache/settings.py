"""The ``[cache]`` table of ``enginehouse.toml`` and the counters the cache keeps."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_URL = re.compile(r"^(memory|off|(redis|rediss|unix)://\S+)$")


class CacheSettings(BaseModel):
    """How the response cache runs. A minimal table::

    [cache]
    url = "rediss://:secret@cache.lan:6380/0"
    ttl_s = 600
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = "off"  # off (the default: answers are never reused unasked), memory (in-process LRU),
    # or redis://, rediss:// (TLS), unix://
    memory_mib: float = Field(64, gt=0)  # bound of the in-memory LRU, entries and keys together
    ttl_s: float = Field(3600, ge=0)  # default lifetime of an entry; 0: until evicted
    nondeterministic: bool = False  # also cache requests without temperature 0 or a fixed seed
    shared: bool = False  # with API keys: one space for all keys instead of one per key
    shared_models: tuple[str, ...] = ()  # models whose entries all keys share (e.g. embeddings)
    max_entry_kib: int = Field(1024, ge=1)  # larger answers are not stored
    timeout_ms: float = Field(250, gt=0)  # bound on one Redis call; past it the request goes uncached
    retry_s: float = Field(1.0, ge=0)  # after a Redis failure, skip it this long before trying again
    key_prefix: str = "enginehouse:cache:"  # Redis keys: several gateways may share one server

    @field_validator("url")
    @classmethod
    def _known_url(cls, value: str) -> str:
        value = value.strip()
        if not _URL.match(value):
            raise ValueError("url must be memory, off, or a redis://, rediss:// or unix:// URL")
        return value

    @property
    def enabled(self) -> bool:
        return self.url != "off"

    @property
    def is_redis(self) -> bool:
        return "://" in self.url

    def with_env(
        self, url: str = "", memory_mib: float = 0, ttl_s: float | None = None, nondeterministic: bool = False
    ) -> CacheSettings:
        """These settings with the environment's on top; empty, 0 or None leave the file's value."""
        update: dict[str, Any] = {}
        if url:
            update["url"] = url
        if memory_mib:
            update["memory_mib"] = memory_mib
        if ttl_s is not None:
            update["ttl_s"] = ttl_s
        if nondeterministic:
            update["nondeterministic"] = True
        return CacheSettings.model_validate({**self.model_dump(), **update})


@dataclass
class CacheStats:
    """Counters since start-up; ``/metrics`` reads them at scrape time (see :func:`metric_families`)."""

    hits: int = 0
    misses: int = 0
    bypassed: int = 0  # not cacheable (non-deterministic) or opted out by the client
    stores: int = 0
    corrupt: int = 0  # undecodable entries, served as misses
    backend_errors: int = 0  # failed or timed-out backend calls
    outages: int = 0  # times the backend went from up to down

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_HELP = {
    "hits": "Requests answered from the response cache.",
    "misses": "Cacheable requests the cache did not have.",
    "bypassed": "Requests not looked up: not deterministic, or the client said no-cache/no-store.",
    "stores": "Answers stored in the response cache.",
    "corrupt": "Undecodable cache entries, answered as misses.",
    "backend_errors": "Response-cache backend calls that failed or timed out (the request went uncached).",
    "outages": "Times the response-cache backend became unreachable.",
}


def metric_families(stats: CacheStats, backend: str, size_bytes: int | None = None) -> Iterator[Any]:
    """Prometheus families for a collector's ``collect()``: ``enginehouse_cache_<counter>_total``."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for name, value in stats.as_dict().items():
        family = CounterMetricFamily(f"enginehouse_cache_{name}", _HELP[name], labels=["backend"])
        family.add_metric([backend], value)
        yield family
    if size_bytes is not None:
        gauge = GaugeMetricFamily(
            "enginehouse_cache_bytes", "Bytes held by the in-memory response cache.", labels=["backend"]
        )
        gauge.add_metric([backend], size_bytes)
        yield gauge
