"""The ``enginehouse`` command: one group, one file per command family."""

from __future__ import annotations

import sys

import click

from enginehouse import __version__
from enginehouse.cli import (
    bench,
    config_cmd,
    convert,
    doctor,
    engines,
    models,
    route,
    rpc_worker,
    serve,
    service,
)
from enginehouse.config import Config, settings_blocks
from enginehouse.errors import EnginehouseError

# "\b" keeps click from re-wrapping each setting's block into one paragraph.
EPILOG = "Environment variables:\n\n" + "\n\n".join("\b\n" + block for block in settings_blocks())


class Group(click.Group):
    """Turns our own errors into one clear line and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except EnginehouseError as exc:
            click.secho(f"Error: {exc.message}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="enginehouse")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """enginehouse: one local LLM server with Ollama's API (port 11434) and OpenAI's (/v1) in front,
    and llama.cpp's llama-server (or another engine) behind.

    Start with `enginehouse serve`, then `enginehouse run smollm2:135m "Hello"` from another shell.
    """
    ctx.obj = Config.from_env()


def main() -> None:

    for command in (
        *models.COMMANDS,
        *convert.COMMANDS,
        *serve.COMMANDS,
        engines.engines,
        doctor.doctor,
        bench.bench,
        *route.COMMANDS,
        *config_cmd.COMMANDS,
        *rpc_worker.COMMANDS,
        *service.COMMANDS,
    ):
        cli.add_command(command)
    cli()
