"""ENGINEHOUSE_REQUEST_TIMEOUT on an https upstream, which aiohttp carries (the runners the gateway starts
use the lean client, tested in tests/security/test_faults.py). The upstream is a stand-in behind TLS that
never finishes: a real engine cannot be made to hang on demand. The gateway must end both kinds of
request at the deadline, in the client's dialect, and drop the upstream's connection."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from aiohttp import web

from enginehouse import http_client
from enginehouse.config import Config
from enginehouse.server.runtime import BackgroundServer
from tests.conftest import free_port
from tests.fakes.openai_upstream import OpenAIUpstream, sse_chunk
from tests.redis_server import TLSFiles, TLSRelay

DEADLINE = 2.0
MARGIN = 3.0  # scheduling on a busy 2-core machine


class StuckUpstream(OpenAIUpstream):
    """Unstreamed: never sends its headers. Streamed: sends one chunk, then nothing. Counts the requests
    whose connection the gateway dropped (aiohttp cancels the handler then)."""

    thread_name = "stuck-upstream"
    model_ids = ("stuck",)

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            if not body.get("stream"):
                await asyncio.sleep(3600)
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            await out.write(sse_chunk({"delta": {"role": "assistant", "content": "Once"}}))
            await asyncio.sleep(3600)
            return out
        except asyncio.CancelledError:
            self.dropped += 1
            raise


@pytest.fixture(scope="module")
def stuck() -> Iterator[StuckUpstream]:
    upstream = StuckUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(
    server_config: Config, stuck: StuckUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundServer]:
    home: Path = tmp_path_factory.mktemp("deadline-home")
    tls = TLSFiles.make(home)
    relay = TLSRelay(tls, free_port(), stuck.port).start()
    port = relay.sock.getsockname()[1]
    (home / "enginehouse.toml").write_text(
        f'[upstreams.stuck]\nengine = "openai"\nurl = "https://127.0.0.1:{port}"\nmodels = []\n\n'
        '[models.slow]\nengine = "openai"\nupstream = "stuck"\nremote_model = "stuck"\n'
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("SSL_CERT_FILE", str(tls.cert))  # the gateway's TLS context trusts the self-signed cert
    http_client.ssl_context.cache_clear()
    try:
        with BackgroundServer(server_config.with_(home=home, request_timeout=DEADLINE)) as server:
            yield server
    finally:
        mp.undo()
        http_client.ssl_context.cache_clear()
        relay.close()


def _wait_dropped(stuck: StuckUpstream, count: int) -> None:
    until = time.monotonic() + 5
    while stuck.dropped < count:
        assert time.monotonic() < until, "the gateway kept the upstream's connection open"
        time.sleep(0.05)


def test_an_unstreamed_request_past_its_deadline_gets_504(
    gateway: BackgroundServer, stuck: StuckUpstream
) -> None:
    before = stuck.dropped
    started = time.monotonic()
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30)
    took = time.monotonic() - started
    assert answer.status_code == 504, answer.text
    assert "deadline of 2s" in answer.json()["error"]["message"]
    assert DEADLINE <= took < DEADLINE + MARGIN
    _wait_dropped(stuck, before + 1)
    ollama_answer = httpx.post(f"{gateway.base_url}/api/chat", json={**body, "stream": False}, timeout=30)
    assert ollama_answer.status_code == 504 and "deadline" in ollama_answer.json()["error"]


def test_a_stream_past_its_deadline_ends_with_an_error_event(
    gateway: BackgroundServer, stuck: StuckUpstream
) -> None:
    before = stuck.dropped
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0)
    started = time.monotonic()
    pieces: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pieces += [c.delta.content or "" for c in chunk.choices]
    took = time.monotonic() - started
    assert pieces == ["Once"]  # what came before the deadline reached the client
    assert "deadline of 2s" in str(caught.value)
    assert DEADLINE <= took < DEADLINE + MARGIN
    _wait_dropped(stuck, before + 1)


def test_a_translated_stream_past_its_deadline_ends_with_an_error_line(
    gateway: BackgroundServer, stuck: StuckUpstream
) -> None:
    """Ollama's door on an OpenAI upstream: the answer is decoded into events and encoded again."""
    before = stuck.dropped
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    started = time.monotonic()
    with httpx.stream("POST", f"{gateway.base_url}/api/chat", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    took = time.monotonic() - started
    assert lines[0]["message"]["content"] == "Once"
    assert "deadline of 2s" in lines[-1]["error"]
    assert DEADLINE <= took < DEADLINE + MARGIN
    _wait_dropped(stuck, before + 1)
