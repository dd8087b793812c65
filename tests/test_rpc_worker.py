"""llama.cpp RPC, without processes: ``--rpc`` on the llama-server command line, the rpc-server command
line, which addresses a worker may bind, and the HELLO probe against fake workers on loopback."""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enginehouse.config import Config
from enginehouse.config_file import parse_config_text
from enginehouse.engines import rpc_worker as rw
from enginehouse.engines.choose import InstalledEngine
from enginehouse.engines.factory import EngineFactory
from enginehouse.engines.llama_server import LlamaServerSettings, build_argv
from enginehouse.errors import InvalidRequest
from enginehouse.hardware import CPU, GPU, Hardware, Memory
from enginehouse.store import BUNDLED_NAME, Store, ensure_bundled

GiB = 1 << 30
CUDA_BUILD = {"llama-server": InstalledEngine("llama-server", "b1", "/x", "built", ("CUDA0: NVIDIA H100",))}


def flags_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# ---- llama-server --rpc ------------------------------------------------------------------------


def test_no_rpc_no_flag() -> None:
    argv = build_argv(Path("/bin/llama-server"), LlamaServerSettings(Path("/m.gguf"), "m"), 8080)
    assert "--rpc" not in argv


def test_rpc_workers_joined_by_commas() -> None:
    settings = LlamaServerSettings(Path("/m.gguf"), "m", rpc=("127.0.0.2:50052", "10.0.0.3:6000"))
    argv = build_argv(Path("/bin/llama-server"), settings, 8080)
    assert flags_after(argv, "--rpc") == "127.0.0.2:50052,10.0.0.3:6000"
    assert argv.count("--rpc") == 1


def test_rpc_from_the_model_entry(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    assert ensure_bundled(store) is not None
    toml = f'[models."{BUNDLED_NAME}".llama_server]\nrpc = ["10.0.0.2:50052", "10.0.0.3:50052"]\n'
    gpu_box = Hardware(
        "Linux",
        "x86_64",
        CPU("cpu", 16, 32),
        Memory(64 * GiB, 60 * GiB),
        (GPU(0, "H100", 80 * GiB, 40 * GiB),),
    )
    config = Config.from_env({}, home=tmp_path, num_parallel=2, ctx_size=1024)
    factory = EngineFactory(
        config, parse_config_text(toml), store=store, hardware=gpu_box, installed=CUDA_BUILD
    )
    record = store.resolve(BUNDLED_NAME)
    settings = factory.settings_for(record)
    assert settings.rpc == ("10.0.0.2:50052", "10.0.0.3:50052")
    # -ngl from the local VRAM would cap what goes to the workers: llama.cpp's --fit decides instead
    assert settings.n_gpu_layers is None
    argv = build_argv(Path("/bin/llama-server"), settings, 9)
    assert flags_after(argv, "--rpc") == "10.0.0.2:50052,10.0.0.3:50052"
    assert "--n-gpu-layers" not in argv
    plain = EngineFactory(config, parse_config_text(""), store=store, hardware=gpu_box, installed=CUDA_BUILD)
    assert factory.estimate_for(record) == plain.estimate_for(record)  # the local estimate stays whole


# ---- rpc-server's command line and bind address -------------------------------------------------


def test_worker_argv() -> None:
    assert rw.worker_argv(Path("/bin/rpc-server")) == [
        "/bin/rpc-server",
        "--host",
        "127.0.0.1",
        "--port",
        "50052",
    ]
    argv = rw.worker_argv(
        Path("/x/rpc-server"), "10.0.0.2", 6000, threads=4, cache=True, devices=("CUDA0", "CUDA1")
    )
    assert argv == [
        "/x/rpc-server",
        *("--host", "10.0.0.2", "--port", "6000", "--threads", "4", "--device", "CUDA0,CUDA1", "--cache"),
    ]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.2", "127.0.0.2"),
        ("localhost", "127.0.0.1"),
        (" 10.0.0.2", "10.0.0.2"),
    ],
)
def test_bind_host_allowed(host: str, expected: str) -> None:
    assert rw.check_bind_host(host) == expected


@pytest.mark.parametrize("host", ["0.0.0.0", "8.8.8.8"])
def test_bind_everywhere_or_public_needs_allow_public(host: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        rw.check_bind_host(host)
    assert "no authentication" in info.value.message and "--allow-public" in info.value.message
    assert rw.check_bind_host(host, allow_public=True) == host
    warning = rw.bind_warning(host, 50052)
    assert warning is not None and "no authentication" in warning
    assert ("EVERY" if host == "0.0.0.0" else "PUBLIC") in warning


@pytest.mark.parametrize(
    ("host", "reason"),
    [("::1", "IPv4 only"), ("rpc.example", "not an IP address"), ("255.255.255.255", "broadcast")],
)
def test_bind_host_refused(host: str, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        rw.check_bind_host(host, allow_public=True)


def test_bind_warning() -> None:
    assert rw.bind_warning("127.0.0.1", 50052) is None
    assert rw.bind_warning("127.0.0.3", 50052) is None
    warning = rw.bind_warning("192.168.1.5", 50052)
    assert warning is not None and "192.168.1.5:50052" in warning and "no authentication" in warning


def test_check_bind_reports_a_taken_port_and_a_foreign_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InvalidRequest, match=re.escape(f"cannot listen on 127.0.0.1:{port}")):
            rw.check_bind("127.0.0.1", port)
    with pytest.raises(InvalidRequest, match=re.escape("cannot listen on 192.0.2.1")):  # TEST-NET-1: not ours
        rw.check_bind("192.0.2.1", 50052)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10.0.0.2:50052", ("10.0.0.2", 50052)), ("gpu-box:1", ("gpu-box", 1)), (" h:65535 ", ("h", 65535))],
)
def test_parse_endpoint(value: str, expected: tuple[str, int]) -> None:
    assert rw.parse_endpoint(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10.0.0.2", "not host:port"),
        (":50052", "not host:port"),
        ("h:", "not host:port"),
        ("h:0", "port"),
        ("h:70000", "port"),
        ("h:http", "port"),
        ("[::1]:50052", "IPv4"),
        ("fe80::1:50052", "IPv4|port"),
        ("a,b:1", "IPv4"),
    ],
)
def test_parse_endpoint_refuses(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        rw.parse_endpoint(value)


# ---- HELLO against fake workers -----------------------------------------------------------------


def hello_reply(major: int = rw.RPC_PROTO_MAJOR, minor: int = 0, patch: int = 0) -> bytes:
    return struct.pack("<Q", 28) + bytes([major, minor, patch, 0]) + bytes(24)


@pytest.fixture
def fake_worker() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """A one-connection TCP server on loopback running ``handle(conn)``; yields its endpoint."""
    servers: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(handle: Callable[[socket.socket], None]) -> str:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        servers.append(server)

        def serve() -> None:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                handle(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return f"127.0.0.1:{server.getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
    for thread in threads:
        thread.join(5)


def read_hello(conn: socket.socket) -> bytes:
    data = b""
    while len(data) < 1 + 8 + 24:
        data += conn.recv(64)
    return data


def test_hello_from_a_worker(fake_worker) -> None:  # type: ignore[no-untyped-def]
    seen: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        seen.append(read_hello(conn))
        conn.sendall(hello_reply(minor=1, patch=2))

    endpoint = fake_worker(handle)
    assert rw.hello(endpoint).version == f"{rw.RPC_PROTO_MAJOR}.1.2"
    assert seen == [bytes([14]) + struct.pack("<Q", 24) + bytes(24)]  # what llama-server sends first


def test_wrong_protocol_version_names_the_worker(fake_worker) -> None:  # type: ignore[no-untyped-def]
    endpoint = fake_worker(lambda conn: (read_hello(conn), conn.sendall(hello_reply(major=3))))
    with pytest.raises(
        rw.RpcWorkerError, match=re.escape(f"RPC worker {endpoint} speaks RPC protocol 3.0.0")
    ):
        rw.hello(endpoint)


def test_busy_worker_times_out_with_its_name(fake_worker) -> None:  # type: ignore[no-untyped-def]
    done = threading.Event()
    endpoint = fake_worker(lambda conn: done.wait(5))  # accepts, never answers
    try:
        with pytest.raises(
            rw.RpcWorkerError, match=re.escape(f"{endpoint} accepted the connection but did not answer")
        ):
            rw.hello(endpoint, timeout=0.3)
    finally:
        done.set()


def test_not_an_rpc_server(fake_worker) -> None:  # type: ignore[no-untyped-def]
    endpoint = fake_worker(lambda conn: conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    with pytest.raises(rw.RpcWorkerError, match=re.escape(f"RPC worker {endpoint}")):
        rw.hello(endpoint)
    closing = fake_worker(lambda conn: None)  # closes at once
    with pytest.raises(rw.RpcWorkerError, match=re.escape(f"RPC worker {closing} closed the connection")):
        rw.hello(closing)


def test_refused_worker_names_itself_and_check_workers_names_all(fake_worker) -> None:  # type: ignore[no-untyped-def]
    nobody = f"127.0.0.1:{rw.free_port('127.0.0.1')}"
    with pytest.raises(rw.RpcWorkerError) as info:
        rw.hello(nobody)
    assert f"RPC worker {nobody} is not reachable" in info.value.message
    assert "enginehouse rpc-worker" in info.value.message
    assert info.value.status == 502
    good = fake_worker(lambda conn: (read_hello(conn), conn.sendall(hello_reply())))
    other = f"127.0.0.1:{rw.free_port('127.0.0.1')}"
    with pytest.raises(rw.RpcWorkerError) as info:
        rw.check_workers([nobody, good, other], timeout=1)
    assert info.value.details["workers"] == [nobody, other]
    assert nobody in info.value.message and other in info.value.message and good not in info.value.message


# ---- the command --------------------------------------------------------------------------------


def test_rpc_worker_command_refuses_every_interface(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from enginehouse.cli.main import cli
    from enginehouse.cli.rpc_worker import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)
    env = {"ENGINEHOUSE_HOME": str(tmp_path)}
    result = CliRunner().invoke(cli, ["rpc-worker", "--host", "0.0.0.0"], env=env)
    assert result.exit_code == 1
    assert "refusing to bind an RPC worker to 0.0.0.0" in result.output and "--allow-public" in result.output
    help_text = CliRunner().invoke(cli, ["rpc-worker", "--help"], env=env).output
    assert "no authentication" in help_text and "--allow-public" in help_text
