"""``enginehouse.toml``: per-model entries, remote upstreams, exclusive groups and defaults.

Environment variables (``config.py``) set the server's global knobs; this file says how each model runs.
A minimal file::

    [models."smollm2:135m"]
    num_parallel = 8
    pinned = true

An invalid file is refused at start-up with the file, the line and the key (:class:`ConfigFileError`),
never half-applied. Unknown keys are errors too: a typo (``pined = true``) must not be silently ignored.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from enginehouse.config_cache import CacheSettings
from enginehouse.config_errors import ConfigFileError, KeyedValueError, line_of
from enginehouse.config_names import check_names
from enginehouse.config_values import parse_endpoint, parse_keep_alive
from enginehouse.errors import InvalidRequest

EngineName = Literal["auto", "llama-server", "vllm", "ollama", "openai"]
REMOTE_ENGINES = ("ollama", "openai")


# llama-server's --cache-type-k/-v values
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LlamaServerOptions(_Strict):
    """llama-server flags a model entry may set (the engine's own names in the comments)."""

    n_gpu_layers: int | None = Field(None, ge=-1)  # -ngl; None: computed from the memory budget
    flash_attn: Literal["on", "off", "auto"] | None = None  # --flash-attn
    cache_type_k: str | None = None  # --cache-type-k (f16, q8_0, q4_0...)
    cache_type_v: str | None = None  # --cache-type-v
    threads: int | None = Field(None, ge=1)  # --threads
    batch_size: int | None = Field(None, ge=1)  # --batch-size
    ubatch_size: int | None = Field(None, ge=1)  # --ubatch-size
    draft_model: str | None = None  # --model-draft: a store name or GGUF path for speculative decoding
    jinja: bool | None = None  # --jinja: the GGUF's own chat template
    # --rpc: llama.cpp RPC workers ("host:port", started by `enginehouse rpc-worker`) to split the model over
    rpc: tuple[str, ...] = ()

    @field_validator("rpc")
    @classmethod
    def _rpc_workers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """ "host:port" as llama-server's --rpc takes them (IPv4 address or host name, port 1-65535)."""
        workers = tuple("{}:{}".format(*parse_endpoint(item)) for item in value)
        if len(set(workers)) != len(workers):
            raise ValueError("an RPC worker is listed twice")
        return workers


class VllmOptions(_Strict):
    """``vllm serve`` flags a model entry may set."""

    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int | None = Field(None, ge=1)
    pipeline_parallel_size: int | None = Field(None, ge=1)
    distributed_executor_backend: Literal["ray", "mp"] | None = None
    enable_prefix_caching: bool | None = None
    sleep_mode: bool = True  # level-1 sleep on idle before a stop: a cold vLLM start costs tens of seconds


class ModelEntry(_Strict):
    """How one model runs. The entry's key is the name clients use."""

    source: str | None = None  # store name, GGUF path or HF directory; default: the key itself
    engine: EngineName = "auto"
    upstream: str | None = None  # an [upstreams.NAME] for the ollama/openai engines
    remote_model: str | None = None  # the model's name at the upstream (default: source or the key)
    num_ctx: int | None = Field(None, ge=1)
    num_parallel: int | None = Field(None, ge=1, le=1024)
    keep_alive: str | float | None = None
    pinned: bool = False
    group: str | None = None  # an exclusive [groups.NAME]: one member loaded at a time
    flags: tuple[str, ...] = ()  # extra command-line arguments for the engine, passed as given
    # When a request with tools sets no tool_choice (Ollama's API has none): see toolcalls.entry_tool_choice.
    tool_choice: Literal["auto", "required", "user-turn"] = "auto"
    llama_server: LlamaServerOptions = LlamaServerOptions()
    vllm: VllmOptions = VllmOptions()
    aliases: tuple[str, ...] = ()  # other names clients may use for this entry ("gpt-4o-mini")
    fallbacks: tuple[str, ...] = ()  # tried in order when this model cannot answer (see routing)
    # A pool: "local" (this node's runner) and [upstreams.NAME] / [[nodes]] names that serve the model
    replicas: tuple[str, ...] = ()
    balance: Literal["least-outstanding", "round-robin", "prefix"] | None = None  # default: [pools]

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive_parses(cls, value: str | float | None) -> str | float | None:
        try:
            parse_keep_alive(value)
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None
        return value

    @property
    def keep_alive_seconds(self) -> float | None:
        """Seconds (``math.inf`` when pinned or negative), or None to use the default."""
        if self.pinned:
            return math.inf
        return parse_keep_alive(self.keep_alive)

    @model_validator(mode="after")
    def _remote_needs_upstream(self) -> ModelEntry:
        if self.engine in REMOTE_ENGINES and not self.upstream:
            raise ValueError(f'engine {self.engine!r} needs upstream = "NAME" of an [upstreams.NAME] table')
        return self

    @model_validator(mode="after")
    def _engine_takes_settings(self) -> ModelEntry:
        """Settings the entry's engine cannot take are refused, not silently ignored."""
        llama = self.llama_server.model_dump(exclude_defaults=True)
        vllm = self.vllm.model_dump(exclude_defaults=True)
        if self.engine in (*REMOTE_ENGINES, "vllm") and llama:
            raise KeyedValueError(
                ["llama_server", next(iter(llama))],
                f"engine {self.engine!r} does not take llama_server options",
            )
        if self.engine in (*REMOTE_ENGINES, "llama-server") and vllm:
            raise KeyedValueError(
                ["vllm", next(iter(vllm))], f"engine {self.engine!r} does not take vllm options"
            )
        if self.engine in REMOTE_ENGINES and self.num_ctx is not None:
            raise KeyedValueError(["num_ctx"], f"engine {self.engine!r} sets its own context; remove num_ctx")
        for kind in ("cache_type_k", "cache_type_v"):
            value = getattr(self.llama_server, kind)
            if value is not None and value not in KV_CACHE_TYPES:
                raise KeyedValueError(
                    ["llama_server", kind], f"{value!r} is not one of {', '.join(KV_CACHE_TYPES)}"
                )
        return self


class Upstream(_Strict):
    """A server enginehouse forwards to: an existing Ollama, or any OpenAI-compatible URL."""

    engine: Literal["ollama", "openai"]
    url: str
    api_key: str | None = None
    models: tuple[str, ...] | None = None  # None: discovered from /api/tags or /v1/models

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("url must start with http:// or https://")
        return value.rstrip("/")


class Node(_Strict):
    """Another enginehouse: the models its ``/api/tags`` lists join this node's pools of the same name."""

    url: str
    name: str | None = None  # default: the URL's host:port
    api_key: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return Upstream._http_url(value)

    @property
    def key(self) -> str:
        return self.name or self.url.split("://", 1)[1].split("/", 1)[0]


class Pools(_Strict):
    """Defaults for replica pools."""

    balance: Literal["least-outstanding", "round-robin", "prefix"] = "least-outstanding"
    probe_interval: float = Field(5.0, gt=0)  # seconds between active health probes of remote replicas
    probe_timeout: float = Field(2.0, gt=0)


class Group(_Strict):
    exclusive: bool = True


class Defaults(_Strict):
    engine: EngineName = "auto"
    num_parallel: int | None = Field(None, ge=1, le=1024)
    num_ctx: int | None = Field(None, ge=1)
    keep_alive: str | float | None = None


class Cooldown(_Strict):
    """When a model, upstream or replica that keeps failing is set aside, and for how long. One
    mechanism for routing's cooldowns and pools' ejection (``pool.health.Health``)."""

    failures: int = Field(3, ge=1)  # this many failures...
    window: float = Field(30.0, gt=0)  # ...within this many seconds...
    seconds: float = Field(10.0, gt=0)  # ...set it aside this long, doubling on each repeat...
    max_seconds: float = Field(300.0, gt=0)  # ...up to this


class FileConfig(_Strict):
    defaults: Defaults = Defaults()
    models: dict[str, ModelEntry] = {}
    upstreams: dict[str, Upstream] = {}
    groups: dict[str, Group] = {}
    aliases: dict[str, str] = {}  # another name for a model: "chat" = "smollm2:135m"
    routers: dict[str, dict[str, Any]] = {}  # [routers.NAME]: see config_routers
    cooldown: Cooldown = Cooldown()
    nodes: tuple[Node, ...] = ()  # [[nodes]]
    pools: Pools = Pools()
    cache: CacheSettings = CacheSettings()

    @model_validator(mode="after")
    def _references_exist(self) -> FileConfig:
        for name, entry in self.models.items():
            if entry.upstream and entry.upstream not in self.upstreams:
                raise ValueError(f"models.{name}: no [upstreams.{entry.upstream}] table")
            if entry.group and entry.group not in self.groups:
                raise ValueError(f"models.{name}: no [groups.{entry.group}] table")
        return self

    @model_validator(mode="after")
    def _replicas_exist(self) -> FileConfig:
        nodes = [n.key for n in self.nodes]
        for i, key in enumerate(nodes):
            if key in self.upstreams or key in nodes[:i] or key == "local":
                raise KeyedValueError(["nodes"], f"node name {key!r} is taken", absolute=True)
        for name, entry in self.models.items():
            for replica in entry.replicas:
                if replica != "local" and replica not in self.upstreams and replica not in nodes:
                    why = f"replica {replica!r} is not 'local', an [upstreams.NAME] or a [[nodes]] name"
                    raise KeyedValueError(["models", name, "replicas"], why, absolute=True)
        return self

    @property
    def node_upstreams(self) -> dict[str, Upstream]:
        """[[nodes]] as upstreams: enginehouse speaks Ollama's API, models discovered."""
        return {n.key: Upstream(engine="ollama", url=n.url, api_key=n.api_key) for n in self.nodes}

    @model_validator(mode="after")
    def _names_are_consistent(self) -> FileConfig:
        check_names(self)
        return self

    @functools.cached_property
    def alias_map(self) -> dict[str, str]:
        """Every alias, from ``[aliases]`` and the entries' own ``aliases`` lists (the config is frozen,
        and names are resolved several times a request, so this is built once)."""
        out = dict(self.aliases)
        for key, entry in self.models.items():
            out.update((alias, key) for alias in entry.aliases)
        return out

    def canonical(self, name: str) -> str:
        """``name`` with aliases followed to the end (the file was checked for cycles)."""
        aliases = self.alias_map
        for _ in range(len(aliases) + 1):
            if name not in aliases:
                return name
            name = aliases[name]
        return name

    def entry(self, name: str) -> ModelEntry | None:
        """The entry for ``name`` (aliases followed)."""
        return self.models.get(name) or self.models.get(self.canonical(name))

    def exclusive_group(self, name: str) -> str | None:
        entry = self.entry(name)
        if entry and entry.group and self.groups[entry.group].exclusive:
            return entry.group
        return None


EMPTY = FileConfig()


def load_config_file(path: Path | str | None) -> FileConfig:
    """Read and validate ``path``; an absent path (None) gives the empty config."""
    if path is None:
        return EMPTY
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(path, f"cannot read: {exc.strerror}") from None
    return parse_config_text(text, path)


def parse_config_text(text: str, path: Path | str = "enginehouse.toml") -> FileConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+)", str(exc))
        message = re.sub(r"\s*\(at line.*\)$", "", str(exc))
        raise ConfigFileError(path, message, int(match.group(1)) if match else None) from None
    try:
        return FileConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        keys = [str(k) for k in error["loc"]]
        message = error["msg"].removeprefix("Value error, ")
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, KeyedValueError):
            keys = cause.keys if cause.absolute else keys + cause.keys
            message = str(cause)
        elif not keys and (found := re.match(r"models\.(\S+?): ", message)):
            keys = ["models", found.group(1)]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        raise ConfigFileError(path, message, line_of(text, keys), ".".join(keys)) from None


def entry_dict(entry: ModelEntry) -> dict[str, Any]:
    """The entry's explicitly set fields, for ``doctor`` and ``show``."""
    return entry.model_dump(exclude_defaults=True)
