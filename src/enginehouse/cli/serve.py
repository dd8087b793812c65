"""Server commands: serve, run, ps, stop. ``run``, ``ps`` and ``stop`` talk to the server over HTTP."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
import orjson

from enginehouse.cli.client import api_key_option, check, client_headers, request
from enginehouse.config import Config
from enginehouse.config_file import load_config_file
from enginehouse.engines.llama_install import find_llama_server
from enginehouse.errors import EnginehouseError


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


@click.command()
@click.option("--host", help="host:port to bind (default ENGINEHOUSE_HOST, 127.0.0.1:11434).")
@click.option("--preload", multiple=True, metavar="MODEL", help="Load MODEL at start-up (repeatable).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Per-model settings (TOML; default ENGINEHOUSE_CONFIG, else HOME/enginehouse.toml if present).",
)
@click.pass_obj
def serve(config: Config, host: str | None, preload: tuple[str, ...], config_file: Path | None) -> None:
    """Start the server: Ollama's API at /api and OpenAI's at /v1, on 127.0.0.1:11434 by default."""
    from enginehouse.server.runtime import run_loop, serve_forever  # the server stack: `serve` only

    if host:
        config = config.with_(host=host)
    if config_file:
        config = config.with_(config_file=config_file)
    setup_logging(config.log_level)
    log = logging.getLogger("enginehouse")
    if config.config_path:  # refused here, with file:line: key, before anything starts
        models = load_config_file(config.config_path).models
        log.info("config: %s (%d model entries)", config.config_path, len(models))
    found = find_llama_server(config)
    if found is None:
        log.warning(
            "llama-server is not installed: models cannot load until you run "
            "`enginehouse engines install llama-server`"
        )
    else:
        log.info("llama-server: %s (%s)", found.path, found.version)
    log.info("model store: %s", config.models)
    run_loop(lambda: serve_forever(config, preload))


def _server_up(base_url: str) -> bool:
    try:  # /api/version answers without a key, so a wrong key is named by the next request, not here
        return httpx.get(f"{base_url}/api/version", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def server_url(config: Config) -> Iterator[str]:
    """The running server's URL, or a temporary in-process server's for the length of one command."""
    if _server_up(config.base_url):
        yield config.base_url
        return
    from enginehouse.server.runtime import BackgroundServer  # the server stack (0.3-0.9 s): when one starts

    click.secho(f"(no server at {config.base_url}; starting one for this command)", dim=True, err=True)
    with BackgroundServer(config) as server:
        yield server.base_url


def stream_chat(base_url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """Stream one chat answer to stdout; return the final line (with Ollama's timing fields), or
    ``{"interrupted": True, ...}`` after Ctrl-C: closing the stream makes the server cancel the
    answer, and the server itself stays up."""
    final: dict[str, Any] = {}
    content = []
    try:
        with httpx.stream("POST", f"{base_url}/api/chat", json=body, headers=headers, timeout=None) as resp:
            check(resp, base_url)
            for raw in resp.iter_lines():
                if not raw:
                    continue
                line = orjson.loads(raw)
                if "error" in line:
                    raise EnginehouseError(str(line["error"]))
                piece = line.get("message", {}).get("content", "")
                content.append(piece)
                click.echo(piece, nl=False)
                sys.stdout.flush()
                if line.get("done"):
                    final = line
    except KeyboardInterrupt:
        final = {"interrupted": True}
    click.echo()
    sys.stdout.flush()
    final["content"] = "".join(content)
    return final


def print_stats(final: dict[str, Any]) -> None:
    """Ollama's ``--verbose`` summary, from the final line's timing fields."""

    def rate(count: int, ns: int) -> str:
        return f"{count / (ns / 1e9):.2f} tokens/s" if ns else "n/a"

    prompt_n, eval_n = final.get("prompt_eval_count", 0), final.get("eval_count", 0)
    rows = [
        ("total duration", f"{final.get('total_duration', 0) / 1e9:.3f}s"),
        ("load duration", f"{final.get('load_duration', 0) / 1e9:.3f}s"),
        ("prompt eval count", f"{prompt_n} token(s)"),
        ("prompt eval rate", rate(prompt_n, final.get("prompt_eval_duration", 0))),
        ("eval count", f"{eval_n} token(s)"),
        ("eval rate", rate(eval_n, final.get("eval_duration", 0))),
    ]
    click.secho("\n".join(f"{k + ':':<22}{v}" for k, v in rows), err=True, dim=True)


@click.command()
@click.argument("model")
@click.argument("prompt", nargs=-1)
@click.option("--verbose", is_flag=True, help="Print timings and tokens/s after each answer.")
@click.option("--keepalive", help="How long the model stays loaded afterwards (e.g. 5m, 0, -1).")
@click.option("--format", "fmt", help="'json' to force a JSON answer.")
@click.option("--system", help="A system prompt.")
@click.pass_obj
@api_key_option
def run(
    config: Config,
    model: str,
    prompt: tuple[str, ...],
    verbose: bool,
    keepalive: str | None,
    fmt: str | None,
    system: str | None,
) -> None:
    """Answer PROMPT with MODEL, or chat interactively when no prompt is given (/bye to leave).

    Uses the model's own chat template. Talks to the running server, or starts one for this command.
    """
    text = " ".join(prompt)
    if not text and not sys.stdin.isatty():
        text = sys.stdin.read()
    base: dict[str, Any] = {"model": model, "stream": True}
    if keepalive is not None:
        base["keep_alive"] = keepalive
    if fmt:
        base["format"] = fmt
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    headers = client_headers(config)
    with server_url(config) as url:
        if text:
            turn = [*history, {"role": "user", "content": text}]
            final = stream_chat(url, {**base, "messages": turn}, headers)
            if final.get("interrupted"):
                raise click.exceptions.Exit(130)  # the shell's code for Ctrl-C
            if verbose:
                print_stats(final)
            return
        load = {"model": model, "messages": []}
        check(httpx.post(f"{url}/api/chat", json=load, headers=headers, timeout=None), url)
        click.secho("Send a message (/bye to quit, /clear to forget the conversation)", dim=True)
        while True:
            try:
                line = click.prompt(">>>", prompt_suffix=" ", default="", show_default=False)
            except (EOFError, click.Abort):
                click.echo()
                return
            if line.strip() in ("/bye", "/exit"):
                return
            if line.strip() == "/clear":
                history = history[:1] if system else []
                continue
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            final = stream_chat(url, {**base, "messages": history}, headers)
            if final.get("interrupted"):  # Ctrl-C stopped the answer: back to the prompt, turn forgotten
                history.pop()
                continue
            history.append({"role": "assistant", "content": final["content"]})
            if verbose:
                print_stats(final)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
@api_key_option
def ps(config: Config, as_json: bool) -> None:
    """List the models loaded in the running server, and the models, upstreams and replicas set aside
    after repeated failures (until when, and why). --json prints the loaded models only."""
    answer = request(config, "GET", "/api/ps")
    models = answer["models"]
    cooled = answer.get("cooled_down") or []
    if as_json:
        click.echo(json.dumps(models, indent=2))
        return
    click.echo(f"{'NAME':<28}{'ENGINE':<14}{'STATE':<10}{'CONTEXT':<9}{'IN FLIGHT':<11}{'RESTARTS':<10}UNTIL")
    for m in models:
        until = m["expires_at"]
        with contextlib.suppress(ValueError):
            expires = datetime.fromisoformat(until.replace("Z", "+00:00"))
            seconds = (expires - datetime.now(UTC)).total_seconds()
            until = "forever" if seconds > 10 * 365 * 86400 else f"{max(0, int(seconds))}s from now"
        click.echo(
            f"{m['name']:<28}{m.get('engine', ''):<14}{m.get('state', ''):<10}"
            f"{m.get('context_length', 0):<9}{m.get('in_flight', 0):<11}{m.get('restarts', 0):<10}{until}"
        )
    restarted = [m for m in models if m.get("restarts")]
    if restarted:
        click.echo("\nRESTARTED (automatic restarts; why the last one happened)")
        for m in restarted:
            click.echo(f"{m['name']:<28}{m['restarts']:<4}{m.get('restart_cause') or ''}")
    if cooled:
        click.echo("\nCOOLED DOWN (failing; tried again after the time shown)")
        for c in cooled:
            click.echo(f"{c['name']:<28}until {c['until']}  {c['reason']}")


@click.command()
@click.argument("model")
@click.pass_obj
@api_key_option
def stop(config: Config, model: str) -> None:
    """Unload MODEL from the running server now."""
    request(config, "POST", "/api/generate", json={"model": model, "keep_alive": 0}, timeout=60)
    click.echo(f"stopped {model}")


@click.command()
@click.argument("node")
@click.option("--undo", is_flag=True, help="Take the node back into its pools.")
@click.option(
    "--timeout", default=300.0, show_default=True, help="Seconds to wait for its requests in flight."
)
@click.pass_obj
@api_key_option
def drain(config: Config, node: str, undo: bool, timeout: float) -> None:
    """Stop sending new pool work to NODE (a [[nodes]] or [upstreams] name; "local" for this
    server's own runners) and wait for its requests in flight to finish. Requests already running
    there complete; new ones go to the pool's other replicas."""
    body = {"node": node, "undo": undo, "timeout": timeout}
    answer = request(config, "POST", "/api/drain", json=body, timeout=timeout + 30)
    if undo:
        click.echo(f"{node} takes pool work again")
    elif answer["in_flight"]:
        click.echo(
            f"{node} takes no new work; {answer['in_flight']} requests still in flight after {timeout:g}s"
        )
    else:
        click.echo(f"{node} drained: no new work, nothing in flight")


COMMANDS = (serve, run, ps, stop, drain)
