"""Client names -> what serves them: one resolution layer for every route and the scheduler.

A name a client sends resolves, in this order, to:

1. an alias (``[aliases]``, or an entry's ``aliases`` list, in enginehouse.toml), followed to the end;
2. a model declared in enginehouse.toml that is not a store model: one on a remote engine
   (``engine = "ollama"`` / ``"openai"`` with an ``upstream``), a vLLM model (``engine = "vllm"``, or a
   Hugging Face directory as ``source``), a GGUF file given by path, or a name an ``[upstreams.NAME]``
   table lists in its ``models``;
3. a store model (the entry's ``source`` when it names one, else the name itself), as before: the store
   path costs two dictionary look-ups more than it did, nothing else;
4. a model discovered at an upstream without a ``models`` list (its ``/api/tags`` or ``/v1/models``).

Discovery is never done on the request path of a known name: :meth:`Catalog.refresh` runs at start-up,
when the listings (``/api/tags``, ``/v1/models``) are asked for and their cache is older than ``ttl``, and
once per ``ttl`` at most when a name is not found (:meth:`Catalog.lookup`).

Models that are not in the store come back as :class:`~enginehouse.engines.external.ExternalRecord`, a
:class:`ModelRecord` that says which engine serves them and where (defined beside the engines, which read
it; re-exported here); :func:`is_gguf` tells the routes whether a record has a local GGUF (for capabilities,
templates and the trained context) or belongs to an engine that decides for itself.

Layer: below routing (which resolves names through it) and beside the scheduler (neither imports the
other: the scheduler gets records), above engines (their upstream listings; the engine factory reads the
records) and store (its manifests). The order is written once, in tests/test_layers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from enginehouse.config_file import EMPTY, FileConfig, ModelEntry, Upstream
from enginehouse.engines.external import REMOTE, ExternalName, ExternalRecord, external_record, is_gguf
from enginehouse.engines.ollama_remote import list_ollama_models
from enginehouse.engines.openai_remote import list_openai_models, probe_upstream
from enginehouse.errors import EnginehouseError, ModelNotFound, StoreError
from enginehouse.store import ModelRecord, Store
from enginehouse.store.names import ModelName

log = logging.getLogger(__name__)

#: Seconds a discovery result is used before the next listing asks the upstream again.
DEFAULT_TTL = 60.0
#: Seconds one upstream may take to list its models.
DISCOVERY_TIMEOUT = 5.0


def _is_hf_dir(source: str) -> bool:
    path = Path(source).expanduser()
    return path.is_dir() and (path / "config.json").is_file()


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "~", "./", "../")) or source.lower().endswith(".gguf")


def _is_gguf_path(source: str) -> bool:
    return source.lower().endswith(".gguf") and Path(source).expanduser().is_file()


Discover = Callable[[str, Upstream], Awaitable[list[dict[str, Any]]]]


async def node_id(upstream: Upstream) -> str | None:
    """An enginehouse node's id (its ``/api/version`` says ``node``), for the loop guard."""
    with contextlib.suppress(EnginehouseError):
        data = await probe_upstream(upstream, DISCOVERY_TIMEOUT)
        node = data.get("node") if isinstance(data, dict) else None
        return node if isinstance(node, str) else None
    return None


async def discover_upstream(name: str, upstream: Upstream) -> list[dict[str, Any]]:
    """The upstream's models: Ollama's ``/api/tags`` entries, or OpenAI's ``/v1/models`` data (each with
    ``name``)."""
    if upstream.engine == "ollama":
        return await list_ollama_models(upstream.url, upstream.api_key, timeout=DISCOVERY_TIMEOUT)
    return await list_openai_models(upstream.url, upstream.api_key, timeout=DISCOVERY_TIMEOUT)


class Catalog:
    def __init__(
        self,
        store: Store,
        file_config: FileConfig = EMPTY,
        *,
        ttl: float = DEFAULT_TTL,
        discover: Discover = discover_upstream,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.file_config = file_config
        self.ttl = ttl
        self._discover = discover
        self._clock = clock
        self._declared = self._declare(file_config)
        self._upstreams = {**file_config.upstreams, **file_config.node_upstreams}
        self._discoverable = {n: u for n, u in self._upstreams.items() if u.models is None}
        self._members: dict[str, ExternalRecord] = {}
        self.node_ids: dict[str, str] = {}  # [[nodes]] name -> the node's id (loop guard)
        self._discovered: dict[str, ExternalRecord] = {}
        self._by_upstream: dict[str, list[ExternalRecord]] = {}
        self._refreshed_at: float | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self._background: asyncio.Future[None] | None = None

    # ---- what enginehouse.toml declares -------------------------------------------------------------
    @staticmethod
    def _declare(fc: FileConfig) -> dict[str, ExternalRecord]:
        out: dict[str, ExternalRecord] = {}
        for up_name, up in fc.upstreams.items():
            for model in up.models or ():
                out.setdefault(
                    model,
                    external_record(model, up.engine, upstream_name=up_name, upstream=up, remote_model=model),
                )
        for key, entry in fc.models.items():
            engine = entry.engine if entry.engine != "auto" else fc.defaults.engine
            source = entry.source or key
            if entry.engine in REMOTE or entry.upstream:
                up_name = entry.upstream or ""
                up = fc.upstreams[up_name]
                out[key] = external_record(
                    key,
                    entry.engine if entry.engine in REMOTE else up.engine,
                    entry=entry,
                    upstream_name=up_name,
                    upstream=up,
                    remote_model=entry.remote_model or entry.source or key,
                )
            elif entry.engine == "vllm" or (engine in ("auto", "vllm") and _is_hf_dir(source)):
                out[key] = external_record(key, "vllm", entry=entry, remote_model=source)
            elif engine in ("auto", "llama-server") and _is_gguf_path(source):
                out[key] = external_record(key, "llama-server", entry=entry, remote_model=source)
        return out

    @property
    def discoverable(self) -> dict[str, Upstream]:
        """Upstreams without a ``models`` list: their models are discovered."""
        return self._discoverable

    # ---- resolution ---------------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        """The name after following aliases."""
        return self.file_config.canonical(name)

    def is_alias(self, name: str) -> bool:
        return name in self.file_config.alias_map

    def resolve(self, name: str) -> ModelRecord:
        """The record for ``name``; no I/O beyond the store's own (cached) manifest read."""
        name = self.canonical(name)
        found = self._declared.get(name) or self._members.get(name)
        if found is not None:
            return found
        if "@" in name and (member := self._member(name)) is not None:
            return member
        entry = self.file_config.models.get(name)
        if entry is not None and entry.source and _looks_like_path(entry.source):
            return self._declare_late(name, entry)
        try:
            record = self.store.resolve(entry.source if entry is not None and entry.source else name)
        except ModelNotFound:
            found = self._find_discovered(name)
            if found is not None:
                return found
            raise
        if entry is not None and record.name.display != name:
            # A named instance: its own runner, entry and name over the source's blob (no copy).
            return replace(record, name=ExternalName(name, record.name.namespace))  # type: ignore[arg-type]
        return record

    # ---- replica pools ------------------------------------------------------------------------------
    def _member(self, name: str) -> ExternalRecord | None:
        """``MODEL@UPSTREAM``: the model as served by that upstream or node (a pool member)."""
        model, _, where = name.rpartition("@")
        up = self._upstreams.get(where)
        if not model or up is None:
            return None
        entry = self.file_config.models.get(model)
        remote = (entry.remote_model or model) if entry is not None else model
        member = external_record(name, up.engine, upstream_name=where, upstream=up, remote_model=remote)
        self._members[name] = member
        return member

    def pool_members(self, name: str) -> list[str]:
        """The pool that serves ``name``, as candidate names (``name`` itself for this node's runner,
        ``name@NODE`` for the others), or [] when it is not pooled: an entry's ``replicas``; else,
        with [[nodes]], this node (when it has the model itself) and each node that lists it."""
        name = self.canonical(name)
        entry = self.file_config.models.get(name)
        if entry is not None and entry.replicas:
            return [name if r == "local" else f"{name}@{r}" for r in entry.replicas]
        nodes = [n.key for n in self.file_config.nodes]
        listing = [n for n in nodes if any(r.remote_model == name for r in self._by_upstream.get(n, ()))]
        if not listing:
            return []
        members = [f"{name}@{n}" for n in listing]
        with contextlib.suppress(EnginehouseError):
            if self._is_local(self.resolve(name)):
                members.insert(0, name)
        return members

    @staticmethod
    def _is_local(record: ModelRecord) -> bool:
        return not isinstance(record, ExternalRecord) or not record.remote

    def instances_of(self, name: str) -> list[str]:
        """``name`` and every entry that runs the same model file (named instances), ``name`` first."""
        name = self.canonical(name)
        try:
            path = self.resolve(name).model_path
        except EnginehouseError:
            return [name]
        out = [name]
        for key, entry in self.file_config.models.items():
            if key == name or entry.engine in REMOTE or entry.upstream:
                continue
            if (entry.source and self.canonical(entry.source) == name) or self._same_file(key, path):
                out.append(key)
        base = self.file_config.models.get(name)
        if base is not None and base.source and base.source not in out and self._same_file(base.source, path):
            out.append(base.source)
        return out

    def _same_file(self, name: str, path: Path) -> bool:
        try:
            return self.resolve(name).model_path == path
        except EnginehouseError:
            return False

    def known(self, name: str) -> bool:
        """Whether ``name`` resolves, without building a not-found error (which lists the closest
        names: a scan of the store). For routers, whose candidates are often not installed."""
        name = self.canonical(name)
        if name in self._declared or name in self._members or self.file_config.models.get(name):
            return True
        if "@" in name or self._find_discovered(name) is not None:
            return True
        try:
            return self.store.find_manifest(ModelName.parse(name)) is not None
        except EnginehouseError:
            return False

    def _declare_late(self, name: str, entry: ModelEntry) -> ExternalRecord:
        """A path ``source`` that did not exist at start-up: declared once it does."""
        self._declared.update((k, v) for k, v in self._declare(self.file_config).items() if k == name)
        found = self._declared.get(name)
        if found is None:
            raise StoreError(
                f"model '{name}': its source {entry.source} is not a GGUF file or a model directory"
            )
        return found

    def _find_discovered(self, name: str) -> ExternalRecord | None:
        found = self._discovered.get(name)
        if found is None and ":" not in name:
            found = self._discovered.get(name + ":latest")  # Ollama's default tag
        return found

    async def lookup(self, name: str) -> ModelRecord:
        """:meth:`resolve`, after :meth:`ensure_known`."""
        await self.ensure_known(name)
        return self.resolve(name)

    async def ensure_known(self, name: str) -> None:
        """Make discovered models current enough for ``name``. Free while the discovery cache is fresh
        (or there is nothing to discover); once it is stale, an unknown name waits for a refresh and a
        known one starts one in the background: at most one listing per upstream per ``ttl``."""
        if not self._stale():
            return
        try:
            self.resolve(name)
        except ModelNotFound:
            await self.refresh()
            return
        if self._background is None or self._background.done():
            self._background = asyncio.ensure_future(self.refresh())

    def entry(self, name: str) -> ModelEntry:
        """The model's entry (aliases followed), or the defaults-only entry."""
        record = self._declared.get(self.canonical(name))
        if record is not None:
            return record.entry
        return self.file_config.entry(name) or ModelEntry()

    # ---- listing and discovery ----------------------------------------------------------------------
    def named_entries(self) -> list[tuple[str, ModelRecord]]:
        """Names a listing shows beside the store's: named instances (entries over a store model) and
        aliases, each with the record it answers with (names that resolve to nothing are left out)."""
        out: list[tuple[str, ModelRecord]] = []
        names = [k for k, e in self.file_config.models.items() if e.source and k not in self._declared]
        for name in [*names, *self.file_config.alias_map]:
            try:
                out.append((name, self.resolve(name)))
            except EnginehouseError:
                continue
        return out

    def external_models(self) -> list[ExternalRecord]:
        """Declared and discovered models outside the store, declared first, one per name."""
        seen: dict[str, ExternalRecord] = dict(self._declared)
        for name, record in self._discovered.items():
            seen.setdefault(name, record)
        return list(seen.values())

    def _stale(self) -> bool:
        return bool(self.discoverable) and (
            self._refreshed_at is None or self._clock() - self._refreshed_at >= self.ttl
        )

    async def refresh(self, *, force: bool = False) -> None:
        """Ask each upstream without a ``models`` list for its models, at most once per ``ttl`` (unless
        ``force``). An upstream that cannot be reached keeps its previous models and is logged."""
        if not self.discoverable or not (force or self._stale()):
            return
        self._refresh_lock = self._refresh_lock or asyncio.Lock()
        async with self._refresh_lock:
            if not (force or self._stale()):
                return
            ups = self.discoverable
            nodes = self.file_config.node_upstreams
            results, ids = await asyncio.gather(
                asyncio.gather(*(self._discover(n, u) for n, u in ups.items()), return_exceptions=True),
                asyncio.gather(*(node_id(u) for u in nodes.values())),
            )
            self.node_ids.update((n, i) for n, i in zip(nodes, ids, strict=True) if i)
            for (up_name, up), result in zip(ups.items(), results, strict=True):
                if isinstance(result, BaseException):
                    message = result.message if isinstance(result, EnginehouseError) else repr(result)
                    log.warning("could not list the models of upstream %s (%s): %s", up_name, up.url, message)
                    continue
                self._by_upstream[up_name] = [
                    external_record(
                        str(item["name"]),
                        up.engine,
                        upstream_name=up_name,
                        upstream=up,
                        remote_model=str(item["name"]),
                        listing=item,
                    )
                    for item in result
                    if item.get("name")
                ]
            discovered: dict[str, ExternalRecord] = {}
            for records in self._by_upstream.values():
                for record in records:
                    discovered.setdefault(record.name.display, record)
            self._discovered = discovered
            self._refreshed_at = self._clock()


__all__ = ["Catalog", "ExternalName", "ExternalRecord", "discover_upstream", "external_record", "is_gguf"]
