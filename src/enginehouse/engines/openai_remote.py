"""Any OpenAI-compatible server as an engine: vLLM, SGLang, TGI, LM Studio, a llama-server elsewhere.

Nothing to start or stop: ``ensure_ready`` checks once that the upstream answers (``GET /v1/models``,
with the upstream's API key) and raises :class:`UpstreamUnavailable` naming the upstream and its URL
when it does not. The API key is sent to that upstream only (:attr:`Engine.request_headers`), never
passed on from or to clients.

The OpenAI door streams requests through unchanged (model renamed to ``remote_model``); the Ollama door
translates to ``/v1/chat/completions`` as it does for llama-server (a remote model has no Go template
for the gateway to render, so chat always goes through the upstream's own chat template).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
import orjson

from enginehouse.engines.base import Engine, EngineInfo
from enginehouse.errors import UpstreamUnavailable

if TYPE_CHECKING:
    from enginehouse.config_file import Upstream

#: Requests that may be in flight to one remote model before the gateway queues (the upstream batches).
DEFAULT_REMOTE_PARALLEL = 64
#: What answers when a remote server is up, by the API it speaks (an enginehouse node speaks Ollama's).
HEALTH_PATHS = {"ollama": "/api/version", "openai": "/v1/models"}


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def get_json(url: str, *, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
    """GET ``url`` and parse its JSON; any failure is an :class:`UpstreamUnavailable` that says why."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(url, headers=headers or {}) as resp,
        ):
            body = await resp.read()
            if resp.status != 200:
                hint = " (wrong or missing api_key?)" if resp.status in (401, 403) else ""
                text = body.decode(errors="replace")[:200]
                raise UpstreamUnavailable(f"GET {url} answered {resp.status}{hint}: {text}")
            return orjson.loads(body)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else "no answer")
        raise UpstreamUnavailable(f"GET {url} failed: {reason}") from exc
    except orjson.JSONDecodeError as exc:
        raise UpstreamUnavailable(f"GET {url} did not answer JSON: {exc}") from exc


async def probe_upstream(upstream: Upstream, timeout: float) -> Any:
    """GET the upstream's health path with its API key: its JSON, or UpstreamUnavailable saying why."""
    url = upstream.url + HEALTH_PATHS[upstream.engine]
    return await get_json(url, headers=auth_headers(upstream.api_key), timeout=timeout)


async def list_openai_models(
    url: str, api_key: str | None = None, *, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """``/v1/models`` of an OpenAI-compatible server, each entry with ``name`` set to its ``id``."""
    data = await get_json(f"{url}/v1/models", headers=auth_headers(api_key), timeout=timeout)
    items = data.get("data") if isinstance(data, dict) else None
    return [{**m, "name": m["id"]} for m in items or [] if isinstance(m, dict) and m.get("id")]


class RemoteEngine(Engine):
    """A model on a server enginehouse attaches to; nothing runs here."""

    forwards = True  # another node: the loop guard travels with each request
    health_path: ClassVar[str] = HEALTH_PATHS["openai"]
    capabilities = frozenset({"completion", "tools"})  # the upstream decides; the gateway refuses nothing

    def __init__(
        self,
        upstream_name: str,
        url: str,
        remote_model: str,
        *,
        api_key: str | None = None,
        num_parallel: int = DEFAULT_REMOTE_PARALLEL,
        check_timeout: float = 10.0,
    ) -> None:
        self.upstream_name = upstream_name
        self.url = url.rstrip("/")
        self.remote_model = remote_model
        self.api_key = api_key
        self.num_parallel = num_parallel
        self.check_timeout = check_timeout
        self._ready = False

    @property
    def base_url(self) -> str:
        return self.url

    @property
    def served_model(self) -> str:
        return self.remote_model

    @property
    def request_headers(self) -> dict[str, str]:
        return auth_headers(self.api_key)

    async def ensure_ready(self, timeout: float | None = None) -> None:
        """Check once that the upstream answers; later calls return at once (a failing upstream is then
        reported by the request that meets it, as a 502)."""
        if self._ready:
            return
        wait = min(self.check_timeout, timeout) if timeout else self.check_timeout
        try:
            await get_json(self.url + self.health_path, headers=self.request_headers, timeout=wait)
        except UpstreamUnavailable as exc:
            raise UpstreamUnavailable(
                f"upstream '{self.upstream_name}' ({self.kind} at {self.url}) is unreachable: {exc.message};"
                f" check [upstreams.{self.upstream_name}] in enginehouse.toml"
            ) from exc
        self._ready = True

    async def stop(self) -> None:
        self._ready = False  # detach: the upstream keeps running

    def info(self) -> EngineInfo:
        return EngineInfo(
            self.kind,
            "ready" if self._ready else "stopped",
            self.url,
            None,
            0,
            {
                "upstream": self.upstream_name,
                "remote_model": self.remote_model,
                "num_parallel": self.num_parallel,
            },
        )


class OpenAIRemoteEngine(RemoteEngine):
    kind = "openai"
