"""Model store commands: list, show, rm, cp, import. They work on the store directly, server or not."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from enginehouse.cli.progress import Reporter
from enginehouse.config import Config
from enginehouse.store import Store, ensure_bundled, import_ollama_store
from enginehouse.store.create import create_model
from enginehouse.store.gguf_info import parameter_size_label, read_gguf_info
from enginehouse.store.modelfile import modelfile_for, parse
from enginehouse.store.ollama_import import default_ollama_models_dir
from enginehouse.store.pull import pull_model


def open_store(config: Config) -> Store:
    store = Store(config.models)
    ensure_bundled(store)
    return store


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def list_models(config: Config, as_json: bool) -> None:
    """List the models in the store."""
    records = open_store(config).list_models()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": r.name.display,
                        "digest": r.manifest_digest,
                        "size": r.size,
                        "modified_at": r.modified_at.isoformat(),
                        "family": r.config.get("model_family"),
                        "parameter_size": r.config.get("model_type"),
                        "quantization": r.config.get("file_type"),
                    }
                    for r in records
                ],
                indent=2,
            )
        )
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "ID", "SIZE", "MODIFIED"):
        table.add_column(col)
    for r in records:
        table.add_row(
            r.name.display,
            r.manifest_digest.removeprefix("sha256:")[:12],
            human_size(r.size),
            r.modified_at.strftime("%Y-%m-%d %H:%M"),
        )
    Console().print(table)


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--modelfile", is_flag=True, help="Print a Modelfile that re-creates the model.")
@click.pass_obj
def show(config: Config, name: str, as_json: bool, modelfile: bool) -> None:
    """Show a model's metadata: architecture, parameters, context, quantization, template."""
    record = open_store(config).resolve(name)
    if modelfile:
        click.echo(modelfile_for(record), nl=False)
        return
    info = read_gguf_info(record.model_path)
    facts = {
        "name": record.name.display,
        "architecture": info.architecture,
        "parameters": info.parameter_count,
        "context_length": info.context_length,
        "embedding_length": info.embedding_length,
        "quantization": info.file_type,
        "size": record.size,
        "digest": record.manifest_digest,
        "model_file": str(record.model_path),
        "chat_template": info.chat_template,
        "system": record.system,
        "parameters_default": record.params,
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    console = Console()
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Model", record.name.display)
    table.add_row("architecture", info.architecture)
    table.add_row("parameters", parameter_size_label(info.parameter_count))
    table.add_row("context length", str(info.context_length))
    table.add_row("embedding length", str(info.embedding_length))
    table.add_row("quantization", info.file_type)
    table.add_row("size", human_size(record.size))
    table.add_row("digest", record.manifest_digest)
    if record.params:
        table.add_row("parameters (defaults)", json.dumps(record.params))
    if record.system:
        table.add_row("system", record.system)
    console.print(table)
    if info.chat_template:
        console.print("[bold]chat template[/bold]")
        console.print(info.chat_template, markup=False, highlight=False)


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm(config: Config, names: tuple[str, ...]) -> None:
    """Remove models (and blobs no other model uses)."""
    store = Store(config.models)
    for name in names:
        store.remove(name)
        click.echo(f"deleted '{name}'")


@click.command()
@click.argument("source")
@click.argument("destination")
@click.pass_obj
def cp(config: Config, source: str, destination: str) -> None:
    """Copy a model under a new name (no data is copied: blobs are shared)."""
    open_store(config).copy(source, destination)
    click.echo(f"copied '{source}' to '{destination}'")


@click.command("import")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--name", help="Name for the imported GGUF file, e.g. mymodel:q4.")
@click.option(
    "--from-ollama",
    "from_ollama",
    is_flag=True,
    help="Index an existing Ollama store in place (PATH or $OLLAMA_MODELS or ~/.ollama/models).",
)
@click.pass_obj
def import_(config: Config, path: Path | None, name: str | None, from_ollama: bool) -> None:
    """Import a GGUF file under a name, or an existing Ollama store without copying it."""
    import os

    store = Store(config.models)
    if from_ollama:
        source = path or default_ollama_models_dir(os.environ)
        report = import_ollama_store(store, source)
        for imported in report.imported:
            click.echo(f"imported {imported}")
        for skipped, reason in report.skipped:
            click.secho(f"skipped {skipped}: {reason}", fg="yellow", err=True)
        click.echo(f"{len(report.imported)} model(s) imported from {source}")
        return
    if path is None or not name:
        raise click.UsageError("give a GGUF PATH and --name NAME, or --from-ollama [DIR]")
    record = store.import_gguf(path, name)
    click.echo(f"imported {record.name.display} ({human_size(record.size)}, {record.manifest_digest[:19]})")


@click.command()
@click.argument("name")
@click.option(
    "-f",
    "--file",
    "modelfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default="Modelfile",
    show_default=True,
    help="The Modelfile to build from.",
)
@click.pass_obj
def create(config: Config, name: str, modelfile: Path) -> None:
    """Create a model from a Modelfile (FROM a model, a GGUF file or a blob; PARAMETER, TEMPLATE,
    SYSTEM, MESSAGE, ADAPTER, LICENSE)."""

    parsed = parse(modelfile.read_text())
    store, base_dir = open_store(config), modelfile.resolve().parent
    with Reporter() as progress:
        record = create_model(store, name, parsed, base_dir=base_dir, progress=progress.pull_event)
    click.echo(f"created {record.name.display}")


@click.command()
@click.argument("name")
@click.option("--insecure", is_flag=True, help="Allow plain http to this name's own registry host.")
@click.pass_obj
def pull(config: Config, name: str, insecure: bool) -> None:
    """Pull a model from an Ollama registry (e.g. qwen2.5:0.5b, or host/namespace/model:tag).

    Blobs are verified by sha256 before they enter the store; an interrupted pull resumes where it stopped.
    """
    import asyncio

    with Reporter(width=24) as progress:
        record = asyncio.run(
            pull_model(open_store(config), name, insecure=insecure, progress=progress.pull_event)
        )
    console = Console(stderr=True, soft_wrap=True)
    console.print(f"pulled {record.name.display} ({human_size(record.size)})")


@click.command()
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also remove files younger than an hour (only when no pull or import is running).",
)
@click.pass_obj
def prune(config: Config, everything: bool) -> None:
    """Remove blobs no model uses, and leftover temporary and partial-download files."""
    removed, freed = Store(config.models).prune(older_than=0 if everything else 3600)
    click.echo(f"removed {removed} file(s), freed {human_size(freed)}")


COMMANDS = (list_models, show, rm, cp, import_, create, pull, prune)
