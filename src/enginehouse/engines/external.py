"""Records of models the store does not hold, and the engine that serves each: a remote upstream
(Ollama or OpenAI-compatible), a vLLM directory or repo id, or a GGUF given by path.

The catalog (:mod:`enginehouse.catalog`) makes them from enginehouse.toml and upstream listings; the engine
factory (:mod:`enginehouse.engines.factory`) reads which engine and where; the routes ask :func:`is_gguf`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enginehouse.config_file import ModelEntry, Upstream
from enginehouse.store import ModelRecord

REMOTE = ("ollama", "openai")


@dataclass(frozen=True)
class ExternalName:
    """The name of a model outside the store, exactly as configured or as its upstream spells it (no
    ``:latest`` added, case kept: OpenAI clients compare ids verbatim)."""

    display: str
    namespace: str = ""  # the upstream's name (``owned_by`` in /v1/models)

    def __str__(self) -> str:
        return self.display


@dataclass
class ExternalRecord(ModelRecord):
    """A model served by something other than a store GGUF: a remote upstream, vLLM, or a GGUF path."""

    engine: str = ""  # "ollama", "openai", "vllm" or "llama-server" (a GGUF given by path)
    entry: ModelEntry = field(default_factory=ModelEntry)
    upstream_name: str | None = None
    upstream: Upstream | None = None
    remote_model: str = ""  # the name at the upstream; vLLM: the HF directory or repo id
    listing: dict[str, Any] = field(default_factory=dict)  # the upstream's own entry for it

    @property
    def remote(self) -> bool:
        return self.engine in REMOTE


def is_gguf(record: ModelRecord) -> bool:
    """Whether the record has a local GGUF file (store models, and GGUF paths in enginehouse.toml)."""
    return not isinstance(record, ExternalRecord) or record.engine == "llama-server"


def external_record(
    name: str,
    engine: str,
    *,
    entry: ModelEntry | None = None,
    upstream_name: str | None = None,
    upstream: Upstream | None = None,
    remote_model: str = "",
    listing: Mapping[str, Any] | None = None,
) -> ExternalRecord:
    """An :class:`ExternalRecord` whose digest is stable for the same engine, place and remote name."""
    listing = dict(listing or {})
    where = upstream.url if upstream else ""
    ident = f"{engine}\0{where}\0{remote_model}"
    model_path = Path(remote_model).expanduser() if engine in ("vllm", "llama-server") else Path("")
    size, modified = 0, datetime.now(UTC)
    if engine == "llama-server":  # a GGUF by path: its size and mtime tell a replaced file
        st = model_path.stat()
        ident += f"\0{st.st_size}\0{st.st_mtime_ns}"
        size, modified = st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)
    digest = "sha256:" + hashlib.sha256(ident.encode()).hexdigest()
    details = listing.get("details") or {}
    config: dict[str, Any] = {
        "model_format": {"vllm": "safetensors", "llama-server": "gguf"}.get(
            engine, details.get("format", "")
        ),
        "model_family": details.get("family", ""),
        "model_families": details.get("families"),
        "model_type": details.get("parameter_size", ""),
        "file_type": details.get("quantization_level", ""),
        "engine": engine,
    }
    if isinstance(listing.get("size"), int):
        size = listing["size"]
    return ExternalRecord(
        name=ExternalName(name, upstream_name or engine),  # type: ignore[arg-type]
        manifest={},
        manifest_digest=digest,
        model_path=model_path,
        model_digest=digest,
        config=config,
        size=size,
        modified_at=modified,
        engine=engine,
        entry=entry or ModelEntry(),
        upstream_name=upstream_name,
        upstream=upstream,
        remote_model=remote_model,
        listing=listing,
    )


__all__ = ["REMOTE", "ExternalName", "ExternalRecord", "external_record", "is_gguf"]
