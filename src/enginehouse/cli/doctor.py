"""``enginehouse doctor``: this machine, its engines, and what each model in the store would run on.

The report is built by :func:`build_report` (a dict, what ``--json`` prints) from the hardware, the
installed engines and the store; the command only renders it. For every model it gives the engine that
``engine = "auto"`` (or the model's own choice) picks, and for a GGUF whether its runner fits the memory
budget the scheduler uses (free RAM less ENGINEHOUSE_MEMORY_RESERVE_MIB, capped by
ENGINEHOUSE_MAX_MEMORY_MIB) at the configured context, else the largest context that would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from enginehouse import hardware, http_client
from enginehouse.cli.client import api_key_option, client_headers
from enginehouse.cli.models import open_store
from enginehouse.config import Config
from enginehouse.config_file import load_config_file
from enginehouse.engines.choose import (
    GGUF,
    INSTALL_HINTS,
    LOCAL_ENGINES,
    VLLM,
    Choice,
    InstalledEngine,
    choose_engine,
    installed_engines,
    model_format,
    requested_engine,
)
from enginehouse.engines.factory import EngineFactory, gguf_info_for
from enginehouse.engines.llama_memory import MiB, estimate_runner
from enginehouse.engines.openai_remote import HEALTH_PATHS, auth_headers
from enginehouse.errors import EnginehouseError
from enginehouse.sched.fit import fit_context
from enginehouse.sched.memory import MemoryBudget
from enginehouse.store import ModelRecord, Store

#: vLLM's default --gpu-memory-utilization: the share of GPU memory it takes for weights and KV cache.
VLLM_GPU_SHARE = 0.9


def memory_budget(config: Config, hw: hardware.Hardware) -> int:
    """Bytes runners may hold now, as the scheduler computes it (nothing loaded)."""
    budget = MemoryBudget(
        cap_bytes=config.max_memory_mib * MiB or None,
        reserve_bytes=config.memory_reserve_mib * MiB,
        free=lambda: hw.memory.available,
    )
    return budget.available()


def _engine_rows(config: Config, installed: dict[str, InstalledEngine]) -> list[dict[str, Any]]:
    rows = []
    for name in LOCAL_ENGINES:
        found = installed.get(name)
        if found is None:
            hint = INSTALL_HINTS[name]
            if name == "llama-server" and config.llama_server is not None:
                hint = (
                    f"ENGINEHOUSE_LLAMA_SERVER names {config.llama_server}, which is not an executable file"
                )
            rows.append({"engine": name, "installed": False, "hint": hint})
            continue
        rows.append(
            {
                "engine": name,
                "installed": True,
                "version": found.version,
                "path": found.path,
                "source": found.source,
                "devices": list(found.devices) if found.devices is not None else None,
            }
        )
    return rows


def _gguf_fit(config: Config, record: ModelRecord, budget: int, choice: Choice) -> dict[str, Any]:
    factory = EngineFactory(config)
    settings = factory.settings_for(record)
    info = gguf_info_for(record)

    def size_at(ctx: int) -> int:
        return estimate_runner(
            info,
            ctx_per_slot=ctx,
            num_parallel=settings.num_parallel,
            kv_contexts=settings.kv_contexts,
            shared_kv=settings.shared_kv,
            embedding=settings.embedding,
            cache_ram_mib=settings.cache_ram_mib,
        ).total

    # The KV cache grows with the contexts it holds: a shared pool's, or one per slot.
    fit = fit_context(size_at, wanted_ctx=settings.ctx_per_slot, slots=settings.kv_contexts, budget=budget)
    reason = fit.reason
    if choice.offload:
        reason += f" (host memory; layers offloaded with {choice.offload} need less)"
    return {
        "fits": fit.fits,
        "ctx_per_slot": fit.ctx_per_slot,
        "slots": fit.slots,
        "total_ctx": fit.total_ctx,
        "wanted_ctx_per_slot": fit.wanted_ctx,
        "needed_bytes": factory.estimate_for(record).total,
        "budget_bytes": fit.budget,
        "fit_reason": reason,
    }


def _vllm_fit(record: ModelRecord, hw: hardware.Hardware) -> dict[str, Any]:
    path = Path(record.model_path)
    weights = sum(p.stat().st_size for p in path.glob("*.safetensors")) if path.is_dir() else 0
    gpu = hw.gpus[0]
    budget = int(gpu.memory_total * VLLM_GPU_SHARE)
    fits = weights < budget
    reason = (
        f"weights {weights / MiB:,.0f} MiB of the {budget / MiB:,.0f} MiB vLLM takes on the {gpu.name}"
        + ("; the rest holds the KV cache" if fits else ": too large for one GPU")
    )
    return {"fits": fits, "needed_bytes": weights, "budget_bytes": budget, "fit_reason": reason}


def model_row(
    config: Config,
    record: ModelRecord,
    hw: hardware.Hardware,
    installed: dict[str, InstalledEngine],
    budget: int,
) -> dict[str, Any]:
    fmt = model_format(record)
    requested = requested_engine(record)
    choice = choose_engine(fmt, requested, hardware=hw, installed=installed)
    row: dict[str, Any] = {
        "name": record.name.display,
        "format": fmt,
        "requested": requested,
        "engine": choice.engine,
        "ready": choice.runnable,
        "offload": choice.offload,
        "reason": choice.reason,
        "fits": None,
    }
    try:
        if choice.engine == "llama-server" and fmt == GGUF:
            row.update(_gguf_fit(config, record, budget, choice))
        elif choice.engine == VLLM and hw.gpus:
            row.update(_vllm_fit(record, hw))
    except (EnginehouseError, OSError, ValueError) as exc:
        row["fit_reason"] = f"could not estimate its size: {exc}"
    return row


def build_report(
    config: Config,
    store: Store,
    hw: hardware.Hardware | None = None,
    installed: dict[str, InstalledEngine] | None = None,
) -> dict[str, Any]:
    """Everything ``doctor`` shows, as JSON-ready data."""
    hw = hw or hardware.detect()
    installed = installed_engines(config) if installed is None else installed
    budget = memory_budget(config, hw)
    return {
        "hardware": hw.to_dict(),
        "engines": _engine_rows(config, installed),
        "memory_budget": {
            "bytes": budget,
            "available_bytes": hw.memory.available,
            "reserve_mib": config.memory_reserve_mib,
            "max_memory_mib": config.max_memory_mib or None,
        },
        "settings": {
            "ctx_per_slot": config.ctx_size,
            "num_parallel": config.num_parallel,
            "kv_pool": config.kv_pool,
        },
        "models": [model_row(config, r, hw, installed, budget) for r in store.list_models()],
        "nodes": node_rows(config),
        "server": server_state(config),
    }


def node_rows(config: Config, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Each [[nodes]] and [upstreams] entry of enginehouse.toml, asked once whether it answers."""

    fc = load_config_file(config.config_path)
    rows = []
    for name, up in {**fc.upstreams, **fc.node_upstreams}.items():
        kind = "node" if name in fc.node_upstreams else up.engine
        path = HEALTH_PATHS[up.engine]
        headers = auth_headers(up.api_key)
        try:
            resp = http_client.request("GET", up.url + path, headers=headers, timeout=timeout)
            ok = resp.status == 200
            detail = f"answers {path}" if ok else f"{path} answered {resp.status}"
            if ok and kind == "node":
                data = resp.json()
                detail = f"enginehouse {data.get('version', '?')}, node {data.get('node', '?')}"
        except (http_client.HttpError, ValueError) as exc:
            ok, detail = False, f"{exc.__class__.__name__}: {exc}"
        rows.append({"name": name, "kind": kind, "url": up.url, "ok": ok, "detail": detail})
    return rows


def server_state(config: Config) -> dict[str, Any] | None:
    """The running server's pools and what it has set aside (None when no server answers)."""
    from enginehouse import http_client

    try:
        data = http_client.get_json(f"{config.base_url}/api/ps", headers=client_headers(config), timeout=2)
    except (http_client.HttpError, ValueError):
        return None
    return {"pools": data.get("pools", []), "cooled_down": data.get("cooled_down", [])}


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
@api_key_option
def doctor(config: Config, as_json: bool) -> None:
    """Show the hardware, the engines installed, and for every model the engine that would run it,
    whether it fits in memory and at what context size."""

    report = build_report(config, open_store(config))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    render(report, Console())


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def render(report: dict[str, Any], console: Console) -> None:
    hw = report["hardware"]
    cpu, mem = hw["cpu"], hw["memory"]
    table = Table(title="Hardware", box=None, header_style="bold", title_justify="left", show_header=False)
    table.add_row("CPU", f"{cpu['model']}: {cpu['physical_cores']} cores, {cpu['logical_cores']} threads")
    table.add_row("SIMD", " ".join(cpu["flags"]) or "none of interest")
    table.add_row("RAM", f"{_gib(mem['total'])}, {_gib(mem['available'])} available")
    for g in hw["gpus"]:
        cc = f", compute {g['compute_capability']}" if g["compute_capability"] else ""
        table.add_row(
            f"GPU {g['index']}",
            f"{g['name']}: {_gib(g['memory_total'])}, {_gib(g['memory_free'])} free{cc}"
            + (f", driver {g['driver']}" if g["driver"] else ""),
        )
    if not hw["gpus"]:
        table.add_row("GPU", "no NVIDIA GPU")
    if hw["apple"]:
        table.add_row("Apple", f"{hw['apple']['chip']}, Metal {'yes' if hw['apple']['metal'] else 'no'}")
    budget = report["memory_budget"]
    table.add_row(
        "Budget",
        f"{_gib(budget['bytes'])} for runners (available less {budget['reserve_mib']} MiB reserve"
        + (f", capped at {budget['max_memory_mib']} MiB" if budget["max_memory_mib"] else "")
        + ")",
    )
    console.print(table)
    console.print()

    engines = Table(title="Engines", box=None, header_style="bold", title_justify="left")
    for col in ("ENGINE", "VERSION", "WHERE", "DEVICES"):
        engines.add_column(col, overflow="fold")
    for e in report["engines"]:
        if not e["installed"]:
            engines.add_row(e["engine"], "not installed", e["hint"], "")
            continue
        devices = "unknown" if e["devices"] is None else (", ".join(e["devices"]) or "CPU only")
        engines.add_row(e["engine"], e["version"], f"{e['path']} ({e['source']})", devices)
    console.print(engines)
    console.print()

    models = Table(title="Models", box=None, header_style="bold", title_justify="left")
    for col in ("NAME", "FORMAT", "ENGINE", "FITS", "CONTEXT", "WHY"):
        models.add_column(col, overflow="fold")
    for m in report["models"]:
        fits = {True: "yes", False: "no", None: "-"}[m["fits"]]
        ctx = f"{m['slots']} x {m['ctx_per_slot']}" if m.get("slots") and m.get("ctx_per_slot") else "-"
        if m["fits"] is False and ctx != "-":
            ctx += " at most"
        why = m["reason"] + (f"; {m['fit_reason']}" if m.get("fit_reason") else "")
        engine = (m["engine"] or "none") + ("" if m["ready"] or not m["engine"] else " (not installed)")
        models.add_row(m["name"], m["format"] or "?", engine, fits, ctx, why)
    if not report["models"]:
        models.add_row("(no models)", "", "", "", "", "")
    console.print(models)
    if report.get("nodes"):
        console.print()
        nodes = Table(title="Nodes and upstreams", box=None, header_style="bold", title_justify="left")
        for col in ("NAME", "KIND", "URL", "STATE"):
            nodes.add_column(col, overflow="fold")
        for n in report["nodes"]:
            nodes.add_row(n["name"], n["kind"], n["url"], ("ok: " if n["ok"] else "DOWN: ") + n["detail"])
        console.print(nodes)
    server = report.get("server")
    if server and (server["pools"] or server["cooled_down"]):
        console.print()
        pools = Table(title="The running server's pools", box=None, header_style="bold", title_justify="left")
        for col in ("REPLICA", "IN FLIGHT", "STATE"):
            pools.add_column(col, overflow="fold")
        for pool in server["pools"]:
            for r in pool["replicas"]:
                state = (
                    "draining"
                    if r["draining"]
                    else ("cooled until " + r["cooled_until"] if r["cooled_until"] else "ok")
                )
                pools.add_row(r["name"], str(r["in_flight"]), state)
        for c in server["cooled_down"]:
            pools.add_row(c["name"], "-", f"cooled until {c['until']}: {c['reason']}")
        console.print(pools)


COMMANDS = (doctor,)
