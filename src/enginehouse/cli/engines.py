"""``enginehouse engines``: install and list the engines that run models."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from enginehouse.config import Config
from enginehouse.engines import llama_install

STAGES = {
    "download": "Downloading llama.cpp source",
    "extract": "Extracting",
    "configure": "Configuring (cmake)",
    "build": "Compiling llama-server",
}


@click.group()
def engines() -> None:
    """Install and inspect engines (llama-server is the default local engine)."""


@engines.command("install")
@click.argument("engine", type=click.Choice(["llama-server"]), default="llama-server")
@click.option("--native", is_flag=True, help="Optimise for this CPU only (GGML_NATIVE=ON); not portable.")
@click.option("--force", is_flag=True, help="Rebuild even when a build is already installed.")
@click.pass_obj
def install(config: Config, engine: str, native: bool, force: bool) -> None:
    """Build llama-server from the pinned llama.cpp source (takes ~6 minutes on 2 cores, once).

    Uses ENGINEHOUSE_LLAMA_SERVER or a llama-server on PATH instead, when there is one and --force is not
    given. The source comes from the llama-cpp-python sdist on the package index, verified by sha256.
    """
    console = Console(stderr=True)
    if not force and (found := llama_install.find_llama_server(config)) is not None:
        console.print(f"llama-server is ready: {found.path} ({found.source}, version {found.version})")
        return
    with Progress(
        TextColumn("{task.description:<30}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: float, total: float | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(STAGES.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        built = llama_install.install(config, native=native or None, progress=progress, force=force)
    seconds = (built.build or {}).get("build_seconds")
    console.print(
        f"llama-server {built.version} installed at {built.path}" + (f" in {seconds:.0f}s" if seconds else "")
    )


@engines.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def list_engines(config: Config, as_json: bool) -> None:
    """Show which engines are available on this machine."""
    found = llama_install.find_llama_server(config)
    rows = [
        {
            "engine": "llama-server",
            "available": found is not None,
            "path": str(found.path) if found else None,
            "source": found.source if found else None,
            "version": found.version if found else None,
        }
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        status = (
            f"{row['path']} ({row['source']}, {row['version']})"
            if row["available"]
            else "not installed: run `enginehouse engines install llama-server`"
        )
        click.echo(f"{row['engine']:<14} {status}")
