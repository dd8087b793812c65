"""Read-only endpoints beyond Ollama's and OpenAI's APIs that the console (``/ui``) draws, documented in
docs/api.md as extensions; any client may use them, behind the same key and Origin rules:

- ``GET /api/status``: the memory budget and, per loaded runner, its estimated, measured and resident
  memory, slots busy and free, requests queued and its keep_alive; the engine each store model would run on;
- ``GET /api/logs`` (the runner logs) and ``GET /api/logs?model=NAME&since=OFFSET`` (one, tailed);
- ``GET /api/route/recent``: the last routing decisions with their reasons (routing/recent.py);
- ``GET /api/bench`` and ``GET /api/bench/{name}``: the ``enginehouse bench`` JSON reports kept in
  ``HOME/bench``.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from enginehouse.engines.llama_server import log_name
from enginehouse.errors import EnginehouseError, InvalidRequest
from enginehouse.routing import recent
from enginehouse.runner_logs import TAIL_LINES, list_logs, read_log
from enginehouse.sched.scheduler import LoadedModel
from enginehouse.server.app_state import GATEWAY, Gateway, json_response

#: A report's file name: no directory part, no hidden file.
_REPORT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\.json")
#: Reports larger than this are listed but not opened (a bench report is a few KiB).
MAX_REPORT_BYTES = 8 << 20


def bench_dir(gw: Gateway) -> Path:
    return gw.config.home / "bench"


def _runner(m: LoadedModel) -> dict[str, Any]:
    info = m.engine.info()
    slots = m.slots
    keep = m.keep_alive
    return {
        "name": m.name,
        "engine": info.engine,
        "state": info.state,
        "estimated_bytes": m.estimate,
        "estimate_terms": None
        if m.memory is None
        else {
            "weights": m.memory.weights,
            "kv_cache": m.memory.kv_cache,
            "compute": m.memory.compute,
            "overhead": m.memory.overhead,
            "prompt_cache": m.memory.prompt_cache,
        },
        "measured_bytes": m.measured,  # peak RSS after its first request; 0 before
        "resident_bytes": m.resident(),  # RSS now
        "slots": slots,
        "busy": min(m.in_flight, slots),
        "queued": max(0, m.in_flight - slots),
        "keep_alive": None if math.isinf(keep) else keep,  # None: forever (pinned or negative)
        "expires_at": m.expires_at,  # Unix seconds; None while in use or kept forever
        "loaded_at": m.loaded_at,
        "load_duration": m.load_duration,
    }


def _engine_of(gw: Gateway, record: Any) -> str:
    choose = getattr(gw.scheduler.engine_factory, "engine_for", None)
    if choose is None:
        return ""
    try:
        return str(choose(record))
    except EnginehouseError:
        return "none"  # nothing installed here can run it; `enginehouse doctor` says why


async def status(request: web.Request) -> web.Response:
    """The scheduler's view: what is loaded, against which budget."""
    gw = request.app[GATEWAY]
    loaded = gw.scheduler.ps()
    runners = [_runner(m) for m in loaded]
    budget = gw.scheduler.budget
    budget_out: dict[str, Any] | None = None
    if budget is not None:
        budget_out = {
            "cap_bytes": budget.cap_bytes,  # ENGINEHOUSE_MAX_MEMORY_MIB; None: no cap
            "reserve_bytes": budget.reserve_bytes,
            "free_bytes": budget.free(),  # the machine's available memory now
            # what all runners may hold now: the loaded ones' memory counts as theirs to keep
            "limit_bytes": budget.available(r["resident_bytes"] for r in runners),
        }
    engines = {r.name.display: _engine_of(gw, r) for r in gw.store.list_models()}
    return json_response(
        {
            "now": time.time(),
            "budget": budget_out,
            "max_queue": gw.scheduler.max_queue,
            "runners": runners,
            "engines": engines,
        }
    )


def _int_arg(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 15:
        raise InvalidRequest(f"'{name}' must be a whole number >= 0")
    return int(raw)


async def logs(request: web.Request) -> web.Response:
    """No ``model``: the logs there are. With ``model`` (a model name or a log's name): its last lines,
    or those after byte ``since`` (the ``offset`` the previous answer gave)."""
    log_dir = request.app[GATEWAY].config.logs
    model = request.query.get("model")
    if not model:
        return json_response({"logs": list_logs(log_dir)})
    since = _int_arg(request, "since", None)
    lines = min(_int_arg(request, "lines", TAIL_LINES) or 0, 2000)
    path = log_dir / log_name(model)
    try:
        chunk = read_log(path, since, lines)
    except FileNotFoundError:
        raise web.HTTPNotFound(reason=f"no runner log for {model!r} (a model logs once it has run)") from None
    except OSError:
        raise web.HTTPNotFound(reason=f"the runner log for {model!r} cannot be read") from None
    return json_response(
        {"model": model, "name": path.stem, "offset": chunk.offset, "size": chunk.size, "lines": chunk.lines}
    )


async def route_recent(request: web.Request) -> web.Response:
    limit = _int_arg(request, "limit", recent.KEEP) or 0
    return json_response({"decisions": recent.recent(request.app[GATEWAY].dispatch, limit)})


def _summary(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "model": data.get("model"),
        "mode": data.get("mode"),
        "levels": data.get("levels"),
        "targets": [t.get("label") for t in data.get("targets") or [] if isinstance(t, dict)],
        "workload": (data.get("workload") or {}).get("description"),
    }


async def bench_list(request: web.Request) -> web.Response:
    """The reports in HOME/bench, newest first (``enginehouse bench --json HOME/bench/NAME.json``)."""
    folder = bench_dir(request.app[GATEWAY])
    found: list[tuple[float, dict[str, Any]]] = []
    try:
        paths = [p for p in folder.iterdir() if _REPORT.fullmatch(p.name)]
    except OSError:
        paths = []
    for path in paths:
        try:
            st = path.stat()
            data = orjson.loads(path.read_bytes()) if st.st_size <= MAX_REPORT_BYTES else {}
        except (OSError, orjson.JSONDecodeError):
            continue  # being written, or not a report
        if not isinstance(data, dict):
            continue
        found.append((st.st_mtime, {**_summary(path.name, data), "modified_at": st.st_mtime}))
    found.sort(key=lambda item: item[0], reverse=True)
    return json_response({"reports": [s for _, s in found]})


async def bench_report(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not _REPORT.fullmatch(name):
        raise InvalidRequest("a report's name is a file name ending in .json")
    path = bench_dir(request.app[GATEWAY]) / name
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise InvalidRequest(f"report {name} is over {MAX_REPORT_BYTES >> 20} MiB")
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        raise web.HTTPNotFound(reason=f"no bench report {name}") from None
    return json_response(data)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/status", status)
    r.add_get("/api/logs", logs)
    r.add_get("/api/route/recent", route_recent)
    r.add_get("/api/bench", bench_list)
    r.add_get("/api/bench/{name}", bench_report)
