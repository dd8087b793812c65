"""Keys end to end: the CLI sends the server's key, each runner answers only the gateway (its own random
key, never on a command line), the server takes x-api-key too, and an open bind without a key is named."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from enginehouse.config import Config
from enginehouse.server.runtime import BackgroundServer, open_bind_warning
from tests.conftest import MODEL, free_port, make_config

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path) -> Iterator[BackgroundServer]:
    config = make_config(tmp_path_factory.mktemp("eh-keyed"), llama_server_bin, api_key=KEY)
    with BackgroundServer(config) as srv:
        yield srv


def eh(srv: BackgroundServer, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ENGINEHOUSE_API_KEY"}
    env |= {"ENGINEHOUSE_HOME": str(srv.config.home), "ENGINEHOUSE_HOST": f"127.0.0.1:{srv.port}"}
    if key is not None:
        env["ENGINEHOUSE_API_KEY"] = key
    argv = [sys.executable, "-m", "enginehouse", *args]
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def test_the_cli_sends_the_key_from_the_environment_or_api_key(keyed: BackgroundServer) -> None:
    assert eh(keyed, "ps", "--json", key=KEY).returncode == 0
    assert eh(keyed, "ps", "--api-key", KEY).returncode == 0
    assert eh(keyed, "ps", "--api-key", KEY, key="wrong").returncode == 0  # the option wins
    for result in (eh(keyed, "ps"), eh(keyed, "ps", key="wrong"), eh(keyed, "stop", MODEL, key="wrong")):
        assert result.returncode == 1
        assert "refused the API key" in result.stderr and "--api-key" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_server_takes_a_bearer_token_or_x_api_key(keyed: BackgroundServer) -> None:
    url = keyed.base_url
    assert httpx.get(f"{url}/api/tags", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{url}/api/tags", headers={"x-api-key": KEY}).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers={"x-api-key": KEY}).status_code == 200
    wrong = httpx.get(f"{url}/api/tags", headers={"x-api-key": "nope"})
    assert wrong.status_code == 401 and "x-api-key" in wrong.json()["error"]
    wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope", "x-api-key": KEY})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/api/version").status_code == 200  # health checks stay open


@pytest.mark.slow
def test_cli_run_answers_through_a_protected_server(keyed: BackgroundServer) -> None:
    result = eh(keyed, "run", MODEL, "Say hi", "--keepalive", "5m", key=KEY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


@pytest.mark.slow
def test_each_runner_answers_only_the_gateway_with_its_own_key(keyed: BackgroundServer) -> None:
    client = ollama.Client(host=keyed.base_url, headers={"Authorization": f"Bearer {KEY}"})
    answer = client.chat(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4}
    )
    assert answer.message.content is not None
    (loaded,) = [m for m in keyed.gateway.scheduler.ps() if m.name == MODEL]
    engine = loaded.engine
    runner = engine.base_url
    body = {"model": engine.served_model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    # Any local process can reach the loopback port: without the runner's key it gets nothing.
    assert httpx.post(f"{runner}/v1/chat/completions", json=body, timeout=30).status_code == 401
    assert httpx.get(f"{runner}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{runner}/slots", timeout=10).status_code == 401
    ok = httpx.post(f"{runner}/v1/chat/completions", json=body, headers=engine.request_headers, timeout=60)
    assert ok.status_code == 200
    key = engine.api_key
    assert len(key) >= 32 and key != KEY
    pid = engine.info().pid
    assert key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()  # argv is world-readable
    assert f"LLAMA_API_KEY={key}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    # The gateway's own calls carry it: its /metrics includes the runner's, scraped with the key.
    metrics = httpx.get(f"{keyed.base_url}/metrics", headers={"x-api-key": KEY}, timeout=10).text
    assert "llamacpp:" in metrics


def test_an_open_bind_without_a_key_is_warned_about() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert open_bind_warning(host, "") is None
    for host in ("0.0.0.0", "::", "", "192.0.2.7"):
        warning = open_bind_warning(host, "")
        assert warning is not None and "ENGINEHOUSE_API_KEY" in warning
        assert open_bind_warning(host, "k") is None


def test_serve_on_every_interface_without_a_key_warns_on_the_console(tmp_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if k != "ENGINEHOUSE_API_KEY"}
    env |= {"ENGINEHOUSE_HOME": str(config.home), "ENGINEHOUSE_HOST": f"0.0.0.0:{free_port()}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "enginehouse", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        text = "".join(lines)
        assert "WARNING" in text and "with no API key" in text and "ENGINEHOUSE_API_KEY" in text
    finally:
        proc.terminate()
        proc.wait(30)
