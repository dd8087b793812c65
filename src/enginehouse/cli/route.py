"""``enginehouse route``: which route, model and tier the ``auto`` router picks for a prompt, without
generating anything.

By default it classifies locally: the keyword tier first, and only when that is not enough a private
embedding runner (the bundled all-MiniLM-L6-v2, converted once into the store) for the embedding tier.
``--server`` asks a running server's ``/api/route`` instead.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import click

from enginehouse.cli.client import api_key_option, check, client_headers
from enginehouse.config import Config
from enginehouse.config_auto_router import resolve_router
from enginehouse.config_file import load_config_file
from enginehouse.errors import EnginehouseError
from enginehouse.routing.classify import Classifier, word_count
from enginehouse.routing.minilm import EMBED_MODEL, local_embedding_runner, prepare_cached
from enginehouse.store import Store


def router_tables(config: Config) -> dict[str, Any]:
    """The config file's ``[routers.*]`` tables (the file is validated: errors name file:line: key)."""

    return dict(load_config_file(config.config_path).routers)


def first_in_store(config: Config, candidates: tuple[str, ...]) -> str | None:
    """The first candidate the local store has (what the gateway would load, with prefer=order)."""

    store = Store(config.models)
    for name in candidates:
        try:
            store.resolve(name)
            return name
        except EnginehouseError:
            continue
    return None


async def classify_locally(
    config: Config, router_name: str, prompt: str, system: str | None, model: str, log: Any
) -> dict[str, Any]:

    router = resolve_router(router_name, router_tables(config))
    clf = Classifier(router)
    decision = clf.classify_keywords(system or "", prompt)  # no runner when the keyword tier decides
    setup: dict[str, float] = {}
    if decision is None and word_count(prompt, router.min_words) >= router.min_words:
        started = time.perf_counter()
        async with local_embedding_runner(config, model=model, log=log) as embedder:
            setup["runner_start_s"] = round(time.perf_counter() - started, 3)
            clf.embed = embedder
            started = time.perf_counter()
            cached = await prepare_cached(clf, config.cache / "router", model)
            setup["examples_s" if not cached else "examples_cached_s"] = round(
                time.perf_counter() - started, 3
            )
            decision = await clf.classify(system, prompt)
    elif decision is None:
        decision = await clf.classify(system, prompt)  # too little text: the default route, no runner
    out = decision.to_dict()
    out["chosen"] = first_in_store(config, decision.candidates)
    out["embed_model"] = model if decision.tier != "keyword" and setup else None
    out["setup"] = setup
    return out


def ask_server(config: Config, router_name: str, prompt: str, system: str | None) -> dict[str, Any]:
    """POST /api/route on a running server: its decision, with each candidate's cost there (what is
    loaded, what a load would evict) and the order it would try them in."""
    import httpx

    base_url, body = config.base_url, {"router": router_name, "prompt": prompt, "system": system}
    try:
        resp = httpx.post(f"{base_url}/api/route", json=body, headers=client_headers(config), timeout=30)
    except httpx.HTTPError as exc:
        raise EnginehouseError(f"no server at {base_url}: {exc}") from None
    if resp.status_code == 404:
        raise EnginehouseError(f"the server at {base_url} has no /api/route; run without --server")
    return check(resp, base_url).json()


def print_decision(d: dict[str, Any]) -> None:
    chosen = d.get("chosen") or "none of them is in the store"
    scores = "  ".join(f"{k} {v:.3f}" for k, v in d["scores"].items()) or "(none: nothing was embedded)"
    rows = [
        ("route", f"{d['route']}  (router {d['router']}, tier {d['tier']})"),
        ("candidates", f"{', '.join(d['candidates']) or '-'}  (prefer {d['prefer']})"),
        ("chosen", chosen),
        ("why", d["reason"] + (f"; {d['why']}" if d.get("why") else "")),
        ("scores", scores),
    ]
    if d.get("order"):  # from a server: what it would try, in order, and what each costs there
        rows.append(("order", ", ".join(d["order"])))
        for name, c in (d.get("costs") or {}).items():
            state = "loaded" if c["loaded"] else "not loaded"
            evicts = f", evicts {', '.join(c['evicts'])}" if c.get("evicts") else ""
            rows.append(("cost", f"{name}: {state}, ~{c['cost_s']:.2f} s{evicts}"))
        for s in d.get("skipped") or []:
            rows.append(("skipped", f"{s['candidate']}: {s['why']}"))
    if d["tier"] != "keyword" and d.get("keyword_scores"):
        rows.append(("keywords", "  ".join(f"{k} {v:g}" for k, v in d["keyword_scores"].items())))
    setup = d.get("setup") or {}
    extra = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.2f}s" for k, v in setup.items())
    elapsed = d.get("decision_ms", d["elapsed_ms"])
    rows.append(("time", f"{elapsed:.3f} ms" + (f"  (not counted: {extra})" if extra else "")))
    for key, value in rows:
        click.echo(f"{key:<11}{value}")


@click.command()
@click.argument("prompt", nargs=-1)
@click.option("--router", "router_name", default="auto", show_default=True, help="Which router decides.")
@click.option("--system", help="A system prompt, classified with the prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option(
    "--server",
    "use_server",
    is_flag=True,
    help="Ask the running server (/api/route) instead of classifying locally.",
)
@click.option(
    "--embed-model",
    default=None,
    help="Embedding model for the local embedding tier (default: all-minilm:l6-v2-q8_0, converted "
    "from the bundled package on first use).",
)
@click.pass_obj
@api_key_option
def route(
    config: Config,
    prompt: tuple[str, ...],
    router_name: str,
    system: str | None,
    as_json: bool,
    use_server: bool,
    embed_model: str | None,
) -> None:
    """Show which route, candidate model and tier the router picks for PROMPT, and why, without
    generating. PROMPT may also come on stdin.

    Locally, the keyword tier needs nothing; the embedding tier starts a private llama-server for the
    embedding model for the length of the command (the reported time is the decision's alone).
    """

    text = " ".join(prompt)
    if not text and not sys.stdin.isatty():
        text = sys.stdin.read()
    if not text.strip():
        raise click.UsageError("give a PROMPT (or pipe one on stdin)")
    if use_server:
        decision = ask_server(config, router_name, text, system)
    else:

        def log(line: str) -> None:
            if line.startswith(("converting the bundled", "converted ")):
                click.secho(line, dim=True, err=True)

        decision = asyncio.run(
            classify_locally(config, router_name, text, system, embed_model or EMBED_MODEL, log)
        )
    if as_json:
        click.echo(json.dumps(decision, indent=2, ensure_ascii=False))
    else:
        print_decision(decision)


COMMANDS = (route,)
