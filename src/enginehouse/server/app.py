"""The gateway application: one route table, one error middleware, shared state.

Each front door answers errors in its own dialect: paths under ``/v1`` get OpenAI's
``{"error": {"message", "type", ...}}``, everything else Ollama's ``{"error": "..."}``. No traceback
reaches a client: unexpected exceptions are logged here and answered as a plain 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import uuid

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from enginehouse import __version__
from enginehouse.api.invalid import invalid_request
from enginehouse.cache import ResponseCache, redact
from enginehouse.catalog import Catalog
from enginehouse.config import Config
from enginehouse.config_file import load_config_file
from enginehouse.config_names import check_references
from enginehouse.config_values import parse_keep_alive
from enginehouse.engines.factory import EngineFactory
from enginehouse.engines.upstream import Upstream
from enginehouse.errors import (
    AllCandidatesFailed,
    EnginehouseError,
    InvalidRequest,
    ServerBusy,
    Unauthorized,
    http_status,
    ollama_error_body,
    openai_error_body,
)
from enginehouse.metrics import HealthCollector, Metrics, PoolCollector
from enginehouse.redact import hide_paths_under
from enginehouse.sched.memory import MemoryBudget, MiB
from enginehouse.sched.scheduler import Scheduler
from enginehouse.server import console, console_api, model_routes, ollama_routes, openai_routes, rerank_routes
from enginehouse.server.app_state import (
    GATEWAY,
    Gateway,
    add_noted_headers,
    json_response,
)
from enginehouse.server.bodies import body_guard
from enginehouse.server.caching import CacheCollector
from enginehouse.server.guard import browser_guard, cors_headers_hook
from enginehouse.server.observe import metrics_endpoint, metrics_middleware
from enginehouse.server.openapi import build_openapi
from enginehouse.server.protocol import HANDLER_ARGS
from enginehouse.store import BUNDLED_NAME, Store, bundled_model_file, ensure_bundled

log = logging.getLogger("enginehouse.server")
CLOSE_TIMEOUT_S = 5.0  # each shutdown step that is not a runner stop (those have their own grace)


OPEN_PATHS = frozenset({"/", "/api/version"}) | console.PUBLIC_PATHS  # health checks; the page's files


def auth_middleware(api_key: str):  # type: ignore[no-untyped-def]
    expected = api_key.encode()

    @web.middleware
    async def check_key(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.path not in OPEN_PATHS:
            # OpenAI's and Ollama's clients send a bearer token, Anthropic's SDK sends x-api-key.
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), expected):
                raise Unauthorized(
                    "missing or wrong API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
                )
        return await handler(request)

    return check_key


@web.middleware
async def error_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    openai = request.path.startswith("/v1") or request.path in rerank_routes.OPENAI_SHAPED
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error: BaseException = InvalidRequest(f"{exc.reason}: {request.method} {request.path}")
        status = exc.status
    except ValidationError as exc:
        error, status = invalid_request(exc), 400
    except EnginehouseError as exc:
        error, status = exc, http_status(exc)
        log.info("%s %s -> %d %s", request.method, request.path, status, exc.message)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        log.info("%s %s: the client went away (its generation was stopped)", request.method, request.path)
        return web.Response(status=499)  # nginx's "client closed request": never sent, but counted
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        error, status = RuntimeError(), 500
    body = openai_error_body(error) if openai else ollama_error_body(error)
    headers = (
        {"Retry-After": str(max(1, round(error.retry_after)))}
        if isinstance(error, ServerBusy | AllCandidatesFailed)
        else None
    )
    if request.method == "HEAD":
        return web.Response(status=status, headers=headers)
    return json_response(body, status=status, headers=headers)


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    # "node": this gateway's id, which other nodes learn for the loop guard (Ollama clients ignore it)
    return json_response({"version": __version__, "node": request.app[GATEWAY].node_id})


async def openapi(request: web.Request) -> web.Response:
    return json_response(build_openapi())


def build_gateway(config: Config) -> Gateway:
    hide_paths_under(config.home, config.models, config.engines, config.logs)  # never in a client's error
    store = Store(config.models)
    file_config = load_config_file(config.config_path)
    catalog = Catalog(store, file_config)
    factory = EngineFactory(config, file_config, store=store)
    budget = MemoryBudget(
        cap_bytes=config.max_memory_mib * MiB or None, reserve_bytes=config.memory_reserve_mib * MiB
    )
    scheduler = Scheduler(
        store,
        factory,
        default_keep_alive=parse_keep_alive(config.keep_alive, 300.0) or 0.0,
        load_timeout=config.load_timeout,
        budget=budget,
        estimator=factory.estimate_for,
        max_queue=max(0, config.max_queue),
        file_config=file_config,
        fairness_s=config.fairness_s,
        policy=config.sched_policy,
        resolve=catalog.resolve,
        stall_timeout=config.runner_stall_timeout,
    )
    metrics = Metrics()
    metrics.attach(scheduler)
    settings = file_config.cache.with_env(url=config.response_cache, memory_mib=config.response_cache_mib)
    cache = ResponseCache(settings) if settings.enabled else None
    if cache is not None:
        metrics.registry.register(CacheCollector(cache))
    gateway = Gateway(
        config,
        store,
        scheduler,
        Upstream(deadline=config.request_timeout),
        file_config,
        catalog,
        metrics,
        cache,
        node_id=node_id(config),
    )
    metrics.registry.register(HealthCollector(gateway.dispatch.health))
    metrics.registry.register(PoolCollector(gateway.dispatch))
    return gateway


def node_id(config: Config) -> str:
    """This node's id, kept in HOME/node-id so that other nodes know it again after a restart."""
    path = config.home / "node-id"
    try:
        found = path.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{12}", found):
            return found
    except OSError:
        pass
    new = uuid.uuid4().hex[:12]
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(new + "\n")
        os.replace(tmp, path)
    return new


async def probe_replicas(gw: Gateway) -> None:
    """Active health probes of remote pool members: a member whose node does not answer its
    ``/api/version`` (or ``/v1/models``) in time is set aside at once; one that answers while its
    cooldown has run out is re-admitted without waiting for a request to try it."""
    from enginehouse.engines.openai_remote import probe_upstream

    settings = gw.file_config.pools
    while True:
        await asyncio.sleep(settings.probe_interval)
        for name in gw.dispatch.pool.members():
            try:
                record = gw.catalog.resolve(name)
            except EnginehouseError:
                continue
            up = getattr(record, "upstream", None)
            if up is None:
                continue  # this node's own runner: the scheduler restarts it
            try:
                await probe_upstream(up, settings.probe_timeout)
            except EnginehouseError as exc:
                gw.dispatch.health.eject(name, f"health probe failed: {exc.message}")
                continue
            state = gw.dispatch.health.state(name)
            if state is not None and state.probing:
                gw.dispatch.health.success(name)


def _exists(catalog: Catalog, name: str) -> bool:
    """Whether a name the config file uses is served: in the store (the bundled model counts before
    its first start links it), declared, or possibly at an upstream whose models are discovered."""
    if catalog.known(name):
        return True
    return bool(catalog.discoverable) or (name == BUNDLED_NAME and bundled_model_file() is not None)


def create_app(config: Config, gateway: Gateway | None = None) -> web.Application:
    gw = gateway or build_gateway(config)
    # The browser guard answers preflights before the key check; bodies are read only once a request passed.
    middlewares = [metrics_middleware(gw.metrics), error_middleware, browser_guard(config)]
    if config.api_key:
        middlewares.append(auth_middleware(config.api_key))
    middlewares.append(body_guard(config))
    app = web.Application(
        middlewares=middlewares, client_max_size=config.max_body_mib * 1024**2, handler_args=HANDLER_ARGS
    )
    app[GATEWAY] = gw

    background: set[asyncio.Future[None]] = set()

    async def on_startup(app: web.Application) -> None:
        gw.store.clean_tmp(older_than=3600)  # younger files may be a CLI import in progress
        record = ensure_bundled(gw.store)
        if record is not None:
            log.info("bundled model %s is available", record.name.display)
        # Names the file uses that nothing serves: refused now, with file:line, not at the first request.
        check_references(config.config_path, gw.file_config, lambda name: _exists(gw.catalog, name))
        await gw.scheduler.start()
        if gw.cache is not None:
            await gw.cache.start()  # a wrong Redis password stops start-up here, with the URL
            log.info("response cache: %s", redact(gw.cache.settings.url))
        background.add(asyncio.ensure_future(gw.catalog.refresh()))  # upstreams' models, off the path
        background.add(asyncio.ensure_future(probe_replicas(gw)))

    async def stop_runners(app: web.Application) -> None:
        # Before aiohttp waits for the handlers in flight: one waiting on a stuck runner would hold the
        # shutdown for aiohttp's whole timeout. Their clients get the door's error as the runners go.
        # Each stop is bounded (SIGTERM, SIGKILL after the stop grace), so this step is too.
        await asyncio.gather(gw.dispatch.close(), gw.scheduler.close(), return_exceptions=True)

    async def on_cleanup(app: web.Application) -> None:
        for task in background:
            task.cancel()
        await stop_runners(app)  # again: a request that was still in flight may have loaded one
        closing = [gw.upstream.close()] + ([gw.cache.close()] if gw.cache is not None else [])
        for step in closing:  # a Redis that stopped answering must not hold the shutdown either
            try:
                await asyncio.wait_for(step, CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("shutting down: a close step took over %gs; left behind", CLOSE_TIMEOUT_S)

    app.on_response_prepare.append(add_noted_headers)
    app.on_response_prepare.append(cors_headers_hook)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(stop_runners)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/", root)  # GET also answers HEAD
    app.router.add_get("/api/version", version)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics_endpoint)
    ollama_routes.add_routes(app)
    model_routes.add_routes(app)
    openai_routes.add_routes(app)
    rerank_routes.add_routes(app)
    console_api.add_routes(app)
    console.add_routes(app)
    return app
