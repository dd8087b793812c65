"""The ``[cache]`` table of ``enginehouse.toml``: how the response cache (:mod:`enginehouse.cache`) runs."""

from __future__ import annotations

import re
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
