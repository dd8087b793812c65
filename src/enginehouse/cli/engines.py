"""``enginehouse engines``: install and list the engines that run models."""

from __future__ import annotations

import json

import click
from rich.console import Console

from enginehouse.cli.progress import stage_progress
from enginehouse.config import Config
from enginehouse.engines import converter, llama_install

STAGES = {
    "download": "Downloading llama.cpp source",
    "extract": "Extracting",
    "configure": "Configuring (cmake)",
    "build": "Compiling llama-server, rpc-server",
    "venv": "Creating the converter's venv",
    "pip": "Installing torch, transformers",
    "copy": "Copying the converter",
    "check": "Checking the converter",
}


INSTALLED_BY = {"rpc-server": "llama-server"}  # one build makes both


@click.group()
def engines() -> None:
    """Install and inspect engines (llama-server is the default local engine)."""


@engines.command("install")
@click.argument("engine", type=click.Choice(["llama-server", "converter"]), default="llama-server")
@click.option("--native", is_flag=True, help="Optimise for this CPU only (GGML_NATIVE=ON); not portable.")
@click.option("--force", is_flag=True, help="Rebuild (or reinstall) even when already installed.")
@click.pass_obj
def install(config: Config, engine: str, native: bool, force: bool) -> None:
    """Build llama-server, and rpc-server for `enginehouse rpc-worker`, from the pinned llama.cpp source
    (one build, ~7 minutes on 2 cores, once), or
    install `converter`: llama.cpp's convert_hf_to_gguf.py from the same source, in a venv of its own
    with torch and transformers (about 1.2 GB), for `enginehouse convert`.

    Uses ENGINEHOUSE_LLAMA_SERVER or a llama-server on PATH instead, when there is one and --force is not
    given. The source comes from the llama-cpp-python sdist on the package index, verified by sha256.
    """
    console = Console(stderr=True, soft_wrap=True)  # a path in a log stays on one line
    if engine == "converter":
        _install_converter(console, config, force)
        return
    if not force and (found := llama_install.find_llama_server(config)) is not None:
        console.print(f"llama-server is ready: {found.path} ({found.source}, version {found.version})")
        return
    with stage_progress(STAGES) as progress:
        built = llama_install.install(config, native=native or None, progress=progress.stage, force=force)
    seconds = (built.build or {}).get("build_seconds")
    console.print(
        f"llama-server {built.version} and rpc-server installed in {built.path.parent}"
        + (f" in {seconds:.0f}s" if seconds else "")
    )


def _install_converter(console: Console, config: Config, force: bool) -> None:
    """``engines install converter``: a bar per stage, and pip's milestones as they happen."""
    if not force and (found := converter.find_converter(config)) is not None:
        console.print(
            f"converter already installed: {found.script} (llama.cpp {found.facts.get('llama_cpp_commit')})"
        )
        return
    with stage_progress(STAGES) as progress:

        def log(text: str) -> None:  # pip's milestones above the bars; all of it goes to the log file
            if text.startswith(("Collecting", "Installing collected", "Successfully installed")):
                progress.note(text, style="dim")

        installed = converter.install(config, progress=progress.stage, log=log, force=force)
    facts = installed.facts
    versions = facts.get("installed", {})
    console.print(
        f"converter installed at {installed.script.parent} in {facts.get('install_seconds', 0):.0f}s"
        f" (torch {versions.get('torch', '?')}, transformers {versions.get('transformers', '?')})"
    )


@engines.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def list_engines(config: Config, as_json: bool) -> None:
    """Show which engines are available on this machine."""
    found = llama_install.find_llama_server(config)
    rpc = llama_install.find_rpc_server(config)
    conv = converter.find_converter(config)
    rows = [
        {
            "engine": "llama-server",
            "available": found is not None,
            "path": str(found.path) if found else None,
            "source": found.source if found else None,
            "version": found.version if found else None,
        },
        {
            "engine": "rpc-server",  # for `enginehouse rpc-worker`; built with llama-server
            "available": rpc is not None,
            "path": str(rpc.path) if rpc else None,
            "source": rpc.source if rpc else None,
            "version": (rpc.build or {}).get("version") if rpc else None,
        },
        {
            "engine": "converter",
            "available": conv is not None,
            "path": str(conv.script) if conv else None,
            "source": "installed" if conv else None,
            "version": conv.facts.get("llama_cpp_commit") if conv else None,
        },
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        installer = INSTALLED_BY.get(row["engine"], row["engine"])
        status = (
            f"{row['path']} ({row['source']}, {row['version']})"
            if row["available"]
            else f"not installed: run `enginehouse engines install {installer}`"
        )
        click.echo(f"{row['engine']:<14} {status}")
