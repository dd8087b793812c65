"""Exact-match response cache in front of the engines, for both doors.

A request's key is the hash of its canonical form after routing (:mod:`.key`); an entry is the bytes
the door sent, event by event, so a hit replays the original stream (:mod:`.record`); entries live in
an in-memory LRU bounded in bytes or in Redis (:mod:`.backends`). Only deterministic requests
(temperature 0, a fixed seed, embeddings) are cached unless the settings say otherwise.
"""

from enginehouse.cache.backends import Backend, CacheConfigError, MemoryBackend, RedisBackend, redact
from enginehouse.cache.key import cache_key, canonical_body, digest_of, is_deterministic, scope_for
from enginehouse.cache.record import CorruptEntry, Entry, Framing, Recorder, decode, encode, replay
from enginehouse.cache.response_cache import (
    CACHE_HEADER,
    TTL_HEADER,
    CachePlan,
    CacheRequest,
    Controls,
    ResponseCache,
    controls_from_headers,
    make_backend,
)
from enginehouse.cache.stats import CacheStats, metric_families
from enginehouse.config_cache import CacheSettings

__all__ = [
    "CACHE_HEADER",
    "TTL_HEADER",
    "Backend",
    "CacheConfigError",
    "CachePlan",
    "CacheRequest",
    "CacheSettings",
    "CacheStats",
    "Controls",
    "CorruptEntry",
    "Entry",
    "Framing",
    "MemoryBackend",
    "Recorder",
    "RedisBackend",
    "ResponseCache",
    "cache_key",
    "canonical_body",
    "controls_from_headers",
    "decode",
    "digest_of",
    "encode",
    "is_deterministic",
    "make_backend",
    "metric_families",
    "redact",
    "replay",
    "scope_for",
]
