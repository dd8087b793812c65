"""The counters the response cache keeps, and their Prometheus families."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any


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
