"""``enginehouse config``: the settings in effect, and ``config check`` for enginehouse.toml."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from enginehouse.catalog import Catalog
from enginehouse.config import SETTINGS, Config
from enginehouse.config_file import load_config_file
from enginehouse.config_names import check_references
from enginehouse.store import Store


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def config(ctx: click.Context, as_json: bool) -> None:
    """Show every setting: its value here, its environment variable and what it does."""
    if ctx.invoked_subcommand is not None:
        return
    cfg: Config = ctx.obj
    rows = [
        (s.env, str(getattr(cfg, s.name) if getattr(cfg, s.name) is not None else ""), s.description)
        for s in SETTINGS
    ]
    if as_json:
        click.echo(json.dumps({env: value for env, value, _ in rows}, indent=2))
        return
    table = Table("variable", "value", "meaning", box=None)
    for env, value, description in rows:
        table.add_row(env, value if env != "ENGINEHOUSE_API_KEY" or not value else "(set)", description)
    Console().print(table)
    path = cfg.config_path
    click.echo(f"\nPer-model settings: {path if path else 'none (create HOME/enginehouse.toml)'}")


@config.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def check(cfg: Config, file: Path | None) -> None:
    """Validate enginehouse.toml (FILE, or the one the server would read): exit 1 with file:line: key
    and the reason when it is wrong."""
    path = file or cfg.config_path
    if path is None:
        click.echo(f"no config file: {cfg.home / 'enginehouse.toml'} does not exist (nothing to check)")
        return
    loaded = load_config_file(path)  # raises ConfigFileError: printed as one line, exit 1
    # Names the file uses that nothing here serves (as the server checks at start-up).
    from enginehouse.server.app import _exists  # the server stack (0.3-0.9 s): `config check` only

    catalog = Catalog(Store(cfg.models), loaded)
    check_references(path, loaded, lambda name: _exists(catalog, name))
    click.echo(
        f"{path}: ok ({len(loaded.models)} models, {len(loaded.upstreams)} upstreams, "
        f"{len(loaded.groups)} groups, {len(loaded.aliases)} aliases)"
    )


COMMANDS = (config,)
