"""The response cache in a real gateway: a repeated deterministic request is answered from the cache on
both doors, streamed and not, with the same bytes, without reaching the runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from enginehouse.config import Config
from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def srv(server_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    home: Path = tmp_path_factory.mktemp("cache-home")
    with BackgroundServer(server_config.with_(home=home, response_cache="memory")) as server:
        yield server


def fetch(srv: BackgroundServer, path: str, body: dict, **headers: str) -> tuple[str, bytes]:
    with httpx.stream("POST", srv.base_url + path, json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200
        return resp.headers.get("x-enginehouse-cache", ""), resp.read()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/api/chat",
            {
                "messages": [{"role": "user", "content": "Say hi."}],
                "options": {"num_predict": 8, "temperature": 0},
            },
        ),
        (
            "/api/generate",
            {"prompt": "Say hi.", "stream": False, "options": {"num_predict": 8, "temperature": 0}},
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 8,
                "stream": True,
                "temperature": 0,
            },
        ),
        ("/v1/completions", {"prompt": "Say hi.", "max_tokens": 8, "temperature": 0}),
    ],
)
def test_miss_then_hit_with_the_same_bytes(srv: BackgroundServer, path: str, body: dict) -> None:
    body = {"model": MODEL, **body}
    first = fetch(srv, path, body)
    loads = srv.gateway.scheduler.loads
    slots_before = srv.gateway.metrics.registry.get_sample_value(
        "enginehouse_output_tokens_total", {"model": MODEL}
    )
    second = fetch(srv, path, body)
    assert first[0] == "miss" and second == ("hit", first[1])
    assert srv.gateway.scheduler.loads == loads  # nothing was generated for the hit
    after = srv.gateway.metrics.registry.get_sample_value("enginehouse_output_tokens_total", {"model": MODEL})
    assert after == slots_before
    assert fetch(srv, path, body, **{"Cache-Control": "no-store"})[0] == ""  # opted out
    hot = (
        {**body, "options": {"temperature": 0.9, "num_predict": 8}}
        if path.startswith("/api")
        else {
            **body,
            "temperature": 0.9,
        }
    )
    assert fetch(srv, path, hot)[0] == ""  # sampled: not cacheable


def test_official_clients_read_cached_answers(srv: BackgroundServer) -> None:
    client = ollama.Client(host=srv.base_url)
    ask = [{"role": "user", "content": "Name a fruit."}]
    a = client.chat(model=MODEL, messages=ask, options={"num_predict": 6, "temperature": 0})
    b = client.chat(model=MODEL, messages=ask, options={"num_predict": 6, "temperature": 0})
    assert a.message.content == b.message.content and b.done
    oa = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused")
    chunks = [
        c.choices[0].delta.content or ""
        for _ in range(2)
        for c in oa.chat.completions.create(
            model=MODEL, messages=ask, max_tokens=6, stream=True, temperature=0
        )
        if c.choices
    ]
    assert "".join(chunks[: len(chunks) // 2]) == "".join(chunks[len(chunks) // 2 :])
    hits = srv.gateway.metrics.registry.get_sample_value(
        "enginehouse_cache_hits_total", {"backend": "memory"}
    )
    assert hits and hits >= 2
