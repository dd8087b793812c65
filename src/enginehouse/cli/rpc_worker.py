"""``enginehouse rpc-worker``: run llama.cpp's rpc-server here, for a llama-server on another host to split a
model over (its model entry's ``llama_server.rpc = ["HOST:PORT", ...]``)."""

from __future__ import annotations

import signal

import click
from rich.console import Console

from enginehouse.child_output import wait_exit
from enginehouse.cli.engines import STAGES
from enginehouse.cli.progress import stage_progress
from enginehouse.config import Config
from enginehouse.engines import llama_install, rpc_worker
from enginehouse.errors import RunnerError


@click.command("rpc-worker")
@click.option(
    "--host",
    default=rpc_worker.DEFAULT_HOST,
    show_default=True,
    help="IPv4 address to listen on: loopback, or this machine's address on a trusted private network.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=rpc_worker.DEFAULT_PORT, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="CPU threads for the computations (default: half the cores).",
)
@click.option(
    "--cache",
    is_flag=True,
    help="Keep the tensors it receives in a local file cache (LLAMA_CACHE), so the next load is faster.",
)
@click.option(
    "--allow-public",
    is_flag=True,
    help="Allow 0.0.0.0 (every interface) or a public address. The RPC protocol has NO authentication.",
)
@click.pass_obj
def rpc_worker_cmd(
    config: Config, host: str, port: int, threads: int | None, cache: bool, allow_public: bool
) -> None:
    """Lend this machine's memory and CPU (or GPU) to a llama-server elsewhere, for models larger than one
    machine. Runs llama.cpp's rpc-server in the foreground until Ctrl-C; builds it first when needed (the
    same build as `enginehouse engines install llama-server`).

    \b
    On the machine that serves the model, list the workers in the model's entry:
      [models."big".llama_server]
      rpc = ["10.0.0.2:50052", "10.0.0.3:50052"]

    WARNING: the RPC protocol has no authentication and no encryption. Anyone who can reach the port can use
    this machine and read what it holds: bind a trusted private network's address, never a public one.
    """
    console = Console(stderr=True)
    bind = rpc_worker.check_bind_host(host, allow_public=allow_public)
    rpc_worker.check_bind(bind, port)
    found = llama_install.find_rpc_server(config)
    if found is None:
        console.print("rpc-server is not built yet: building llama-server and rpc-server (once)")
        with stage_progress(STAGES, width=30) as progress:
            llama_install.install(config, progress=progress.stage)
        found = llama_install.require_rpc_server(config)
    endpoint = f"{bind}:{port}"
    console.print(f"rpc-worker: {found.path} ({found.source}) on {endpoint}", highlight=False, markup=False)
    if warning := rpc_worker.bind_warning(bind, port):
        console.print(f"[bold red]WARNING:[/] {warning}", highlight=False)
    worker = rpc_worker.RpcWorker(found.path, bind, port, threads=threads, cache=cache)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` or a service manager: stop the worker the same way
    try:
        reply = worker.start(timeout=60).reply
        assert reply is not None and worker.proc is not None
        console.print(
            f"rpc-worker: ready on {endpoint} (RPC protocol {reply.version}). On the serving host, add"
            f' rpc = ["{endpoint}"] to the model\'s [models."NAME".llama_server] table. Ctrl-C stops it.',
            highlight=False,
            markup=False,
        )
        code = wait_exit(worker.proc)  # not a bare wait(): Ctrl-C could go unheard (see child_output)
    except KeyboardInterrupt:
        console.print("rpc-worker: stopping")
        worker.stop()
        return
    except RunnerError:
        worker.stop()
        raise
    if code != 0:
        raise RunnerError(f"rpc-server on {endpoint} exited with code {code}")
    raise RunnerError(f"rpc-server on {endpoint} stopped (exit code 0); see its output above")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


COMMANDS = (rpc_worker_cmd,)
