"""Ctrl-C in ``enginehouse run`` stops the answer, not the server; in the interactive mode it returns
to the prompt. The CLI runs as a real process (on a pseudo-terminal for the interactive mode) against a
real server."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import ollama
import pytest

from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL

pytestmark = pytest.mark.slow

# A long answer whatever the model's mood: a story, decoded greedily (the bundled model's own sampling
# answers some prompts in a line). Markers are bytes of the answer, never its content.
LONG = "Write a long story about a lighthouse keeper who finds a message in a bottle."
STORYTELLER = "storyteller:latest"
ANSWERING = 40  # bytes of answer seen: it is streaming


@pytest.fixture(scope="module", autouse=True)
def storyteller(server: BackgroundServer) -> Iterator[None]:
    client = ollama.Client(host=server.base_url)
    client.create(model=STORYTELLER, from_=MODEL, parameters={"temperature": 0})
    yield
    client.delete(STORYTELLER)  # the session's server is shared: leave its store as it was


def cli_env(server: BackgroundServer) -> dict[str, str]:
    return {**os.environ, "ENGINEHOUSE_HOST": f"127.0.0.1:{server.port}"}


def read_until(fd: int, marker: bytes | int, seen: bytearray, timeout: float = 120) -> None:
    """Read ``fd`` into ``seen`` until ``marker`` appears after what was there before, or (an int)
    that many more bytes arrived."""
    start, deadline = len(seen), time.monotonic() + timeout

    def missing() -> bool:
        if isinstance(marker, int):
            return len(seen) - start < marker
        return marker not in seen[start:]

    while missing():
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {bytes(seen[start:])[-400:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the pty's other side closed
                chunk = b""
            assert chunk, f"closed before {marker!r}: {bytes(seen[start:])[-400:]!r}"
            seen += chunk


def wait_idle(server: BackgroundServer, timeout: float = 30) -> None:
    """The server answers and its runner has nothing in flight: the interrupted answer was cancelled."""
    deadline = time.monotonic() + timeout
    while True:
        models = httpx.get(server.base_url + "/api/ps", timeout=5).json()["models"]
        if all(m.get("in_flight", 0) == 0 for m in models):
            return
        assert time.monotonic() < deadline, models
        time.sleep(0.2)


def test_ctrl_c_stops_a_one_shot_answer_and_leaves_the_server_up(server: BackgroundServer) -> None:
    cmd = [sys.executable, "-m", "enginehouse", "run", STORYTELLER, LONG]
    proc = subprocess.Popen(cmd, env=cli_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        read_until(proc.stdout.fileno(), ANSWERING, bytearray())  # the answer is streaming
        assert proc.poll() is None  # not yet over: the signal interrupts it
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130 and b"Traceback" not in err, err
    wait_idle(server)
    assert httpx.get(server.base_url + "/api/version", timeout=5).status_code == 200


def test_ctrl_c_in_the_interactive_mode_returns_to_the_prompt(server: BackgroundServer) -> None:
    master, slave = pty.openpty()
    cmd = [sys.executable, "-m", "enginehouse", "run", STORYTELLER]
    proc = subprocess.Popen(cmd, env=cli_env(server), stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = bytearray()
    try:
        read_until(master, b">>> ", seen)
        os.write(master, LONG.encode() + b"\n")
        read_until(master, LONG.encode() + b"\r\n", seen)  # the terminal's echo of the line
        answer = len(seen)
        read_until(master, ANSWERING, seen)  # the answer is streaming
        assert b">>> " not in seen[answer:]  # not yet over: the signal interrupts it
        proc.send_signal(signal.SIGINT)
        read_until(master, b">>> ", seen, timeout=20)  # back at the prompt
        wait_idle(server)
        os.write(master, b"/bye\n")
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        os.close(master)
    assert b"Traceback" not in seen and b"Aborted" not in seen
