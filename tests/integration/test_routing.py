"""Routing with real runners on the bundled model: aliases through both official clients, named instances
over one blob, ``num_ctx`` picking an instance, the ``auto`` router and its cost rule, fallbacks (cannot
fit, refused connection, 5xx before the first byte, context overflow), a mid-stream failure that ends in
an explicit error, and cooldown with recovery.

The fake upstream is only for what a real engine cannot do on demand: fail with a 5xx, or die after the
first byte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import ollama
import openai
import orjson
import pytest
from aiohttp import web

from enginehouse.server.runtime import BackgroundServer
from enginehouse.wire import SSE_DONE
from tests.conftest import MODEL, free_port, make_config
from tests.fakes.openai_upstream import OpenAIUpstream, sse_chunk

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Say hello."}]
SHORT = {"temperature": 0, "max_tokens": 4}


class FlakyUpstream(OpenAIUpstream):
    """An OpenAI-compatible upstream: model ``crash`` answers 500 while ``broken`` (else a short
    stream), model ``cut`` sends one chunk and drops the connection."""

    thread_name = "flaky-upstream"
    model_ids = ("crash", "cut")

    def __init__(self) -> None:
        super().__init__()
        self.broken = True
        self.hits: dict[str, int] = {}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        self.hits[model] = self.hits.get(model, 0) + 1
        if model == "crash" and self.broken:
            return web.json_response({"error": {"message": "CUDA error: out of memory"}}, status=500)
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        head = {"id": "x", "created": 0, "model": model}
        choice = {"delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}
        await out.write(sse_chunk(choice, **head))
        if model == "cut":
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()  # the engine dies mid-stream
            return out
        await out.write(sse_chunk({"delta": {}, "finish_reason": "stop"}, **head) + SSE_DONE)
        await out.write_eof()
        return out


@pytest.fixture(scope="module")
def flaky() -> Iterator[FlakyUpstream]:
    up = FlakyUpstream().start()
    yield up
    up.stop()


CONFIG = """
[models."smollm2:135m"]
aliases = ["gpt-4o-mini", "llama3"]

[models.live]
source = "smollm2:135m"
num_ctx = 512
num_parallel = 2

[models.code]
source = "smollm2:135m"
num_ctx = 2048
num_parallel = 1

[models.coder]
source = "smollm2:135m"
num_ctx = 768
num_parallel = 1

[models.tiny]
source = "smollm2:135m"
num_ctx = 128
num_parallel = 1
fallbacks = ["smollm2:135m"]

[models.huge]
source = "smollm2:135m"
num_ctx = 8192
num_parallel = 512
fallbacks = ["smollm2:135m"]

[upstreams.dead]
engine = "openai"
url = "http://127.0.0.1:{dead}"
models = []

[upstreams.flaky]
engine = "openai"
url = "http://127.0.0.1:{flaky}"
models = []

[models.huge2]
source = "smollm2:135m"
num_ctx = 8192
num_parallel = 512

[models.doomed]
engine = "openai"
upstream = "dead"
remote_model = "x"
fallbacks = ["huge2"]

[models.refuser]
engine = "openai"
upstream = "dead"
remote_model = "x"
fallbacks = ["smollm2:135m"]

[models.crasher]
engine = "openai"
upstream = "flaky"
remote_model = "crash"
fallbacks = ["smollm2:135m"]

[models.cutter]
engine = "openai"
upstream = "flaky"
remote_model = "cut"
fallbacks = ["smollm2:135m"]

[cooldown]
failures = 2
window = 60
seconds = 4

[routers.auto.routes.code]
candidates = ["coder", "smollm2:135m"]

[routers.best]
default = "general"
[routers.best.routes.general]
description = "anything"
examples = ["hello there"]
candidates = ["coder", "smollm2:135m"]
prefer = "quality"
"""


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, flaky: FlakyUpstream
) -> Iterator[BackgroundServer]:
    home = tmp_path_factory.mktemp("routing")
    (home / "enginehouse.toml").write_text(CONFIG.format(dead=free_port(), flaky=flaky.port))
    config = make_config(home, llama_server_bin, max_memory_mib=6000, keep_alive="10m")
    with BackgroundServer(config) as srv:
        yield srv


def oai(gw: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)


def chat_raw(gw: BackgroundServer, model: str, **kw: object) -> httpx.Response:
    body = {"model": model, "messages": HI, "stream": False, "options": {"num_predict": 4, "temperature": 0}}
    body.update(kw)
    return httpx.post(gw.base_url + "/api/chat", json=body, timeout=120)


# ---- aliases -------------------------------------------------------------------------------------------
def test_aliases_reach_the_model_through_both_clients(gw: BackgroundServer) -> None:
    raw = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI, **SHORT)
    answer = raw.parse()
    assert answer.model == "gpt-4o-mini" and answer.choices[0].message.content
    assert raw.headers["x-enginehouse-model"] == MODEL
    reply = ollama.Client(host=gw.base_url).chat(model="llama3", messages=HI, options={"num_predict": 4})
    assert reply.model == "llama3" and reply.message.content
    streamed = list(oai(gw).chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True, **SHORT))
    assert streamed and all(c.model == "gpt-4o-mini" for c in streamed)
    names = {m.model for m in ollama.Client(host=gw.base_url).list().models}
    assert {"gpt-4o-mini", "llama3", "live", "code", MODEL} <= names
    ids = {m.id for m in oai(gw).models.list()}
    assert {"gpt-4o-mini", "llama3", "live", "code"} <= ids
    assert MODEL in {m.name for m in gw.gateway.scheduler.ps()}  # the engine saw the model, not the alias


# ---- named instances ----------------------------------------------------------------------------------
def test_two_instances_serve_side_by_side_from_one_blob(gw: BackgroundServer) -> None:
    client = ollama.Client(host=gw.base_url)
    for name in ("live", "code"):
        assert client.generate(model=name, prompt="Hi", options={"num_predict": 2}).response is not None
    ps = {m.model: m for m in client.ps().models}
    assert ps["live"].context_length == 512 and ps["code"].context_length == 2048
    sched = gw.gateway.scheduler
    live, code = sched.get("live"), sched.get("code")
    assert live is not None and code is not None
    assert live.slots == 2 and code.slots == 1
    assert live.engine.info().pid != code.engine.info().pid
    assert live.record.model_path == code.record.model_path  # one blob, no copy
    blobs = [p for p in (gw.config.models / "blobs").iterdir() if p.stat().st_size > 50 << 20]
    assert len(blobs) == 1


def test_num_ctx_picks_an_instance_without_a_reload(gw: BackgroundServer) -> None:
    chat_raw(gw, "code")  # loaded (and already loaded by the previous test when run in order)
    loads = gw.gateway.scheduler.loads
    resp = chat_raw(gw, "live", options={"num_ctx": 1500, "num_predict": 2})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-enginehouse-model"] == "code"  # the smallest instance with 1500 tokens
    assert resp.json()["model"] == "live"
    assert gw.gateway.scheduler.loads == loads
    live = gw.gateway.scheduler.get("live")
    assert live is None or live.ctx_per_slot == 512  # live was not reloaded bigger


# ---- routers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "route"),
    [
        ("Write a Python function that reverses a linked list, with type hints.", "code"),
        ("Solve for x: 3x + 7 = 22. Show each step.", "math"),
        ("Write a short poem about the sea at night.", "writing"),
        ("Draft a polite email to my landlord asking to fix the heating.", "writing"),
    ],
)
def test_auto_routes_clear_prompts(gw: BackgroundServer, prompt: str, route: str) -> None:
    decision = httpx.post(gw.base_url + "/api/route", json={"router": "auto", "prompt": prompt}).json()
    assert decision["route"] == route and decision["tier"] == "keyword"
    assert decision["chosen"] == MODEL  # the only installed candidate of the default routes
    assert decision["decision_ms"] < 50


def test_latency_prefers_a_warm_candidate_and_quality_the_first(gw: BackgroundServer) -> None:
    chat_raw(gw, MODEL)  # warm
    assert gw.gateway.scheduler.get("coder") is None
    prompt = "Write a Python function that reverses a linked list, with type hints."
    warm = httpx.post(gw.base_url + "/api/route", json={"router": "auto", "prompt": prompt}).json()
    assert warm["order"][:2] == [MODEL, "coder"], warm
    assert warm["costs"][MODEL]["cost_s"] == 0 and warm["costs"]["coder"]["cost_s"] > 0
    assert "is loaded" in warm["why"]
    best = httpx.post(gw.base_url + "/api/route", json={"router": "best", "prompt": "hello"}).json()
    assert best["order"][0] == "coder" and "prefer quality" in best["why"]
    raw = oai(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": prompt}], **SHORT
    )
    assert raw.headers["x-enginehouse-route"] == "auto/code (keyword)"
    assert raw.headers["x-enginehouse-model"] == MODEL and raw.parse().model == "auto"
    assert gw.gateway.scheduler.get("coder") is None  # no swap for a routed request
    metrics = httpx.get(gw.base_url + "/metrics").text
    assert (
        f'enginehouse_route_decisions_total{{model="{MODEL}",route="code",router="auto",tier="keyword"}}'
        in metrics
    )


# ---- fallbacks ----------------------------------------------------------------------------------------
def test_fallback_when_a_model_cannot_fit(gw: BackgroundServer) -> None:
    resp = chat_raw(gw, "huge")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-enginehouse-fallback"] == f"huge, {MODEL}"
    assert resp.headers["x-enginehouse-model"] == MODEL and resp.json()["model"] == "huge"


def test_fallback_when_the_upstream_refuses_connections(gw: BackgroundServer) -> None:
    started = time.monotonic()
    raw = oai(gw).chat.completions.with_raw_response.create(model="refuser", messages=HI, **SHORT)
    assert raw.parse().choices[0].message.content is not None
    assert raw.headers["x-enginehouse-fallback"] == f"refuser, {MODEL}"
    assert time.monotonic() - started < 30


def test_fallback_on_a_5xx_before_the_first_byte_then_cooldown_and_recovery(
    gw: BackgroundServer, flaky: FlakyUpstream
) -> None:
    flaky.broken, flaky.hits = True, {}
    for _ in range(2):  # two failures in the window: cooled down
        stream = ollama.Client(host=gw.base_url).chat(
            model="crasher", messages=HI, stream=True, options={"num_predict": 4}
        )
        parts = list(stream)
        assert parts[-1].done and "".join(p.message.content or "" for p in parts)
    assert flaky.hits == {"crash": 2}
    ps = httpx.get(gw.base_url + "/api/ps").json()
    assert [c["name"] for c in ps["cooled_down"]] == ["crasher"]
    assert "CUDA error" in ps["cooled_down"][0]["reason"]
    resp = chat_raw(gw, "crasher")  # skipped without being asked
    assert resp.status_code == 200 and flaky.hits == {"crash": 2}
    assert resp.headers["x-enginehouse-fallback"] == f"crasher, {MODEL}"
    assert (
        'enginehouse_cooled_down_until_seconds{target="crasher"}' in httpx.get(gw.base_url + "/metrics").text
    )
    flaky.broken = False  # it recovers; after the cooldown one trial request decides
    until = datetime.fromisoformat(ps["cooled_down"][0]["until"].replace("Z", "+00:00")).timestamp()
    time.sleep(max(0.0, until - time.time()) + 0.1)
    resp = chat_raw(gw, "crasher")
    assert resp.status_code == 200 and resp.headers["x-enginehouse-model"] == "crasher"
    assert "x-enginehouse-fallback" not in resp.headers and flaky.hits == {"crash": 3}
    assert httpx.get(gw.base_url + "/api/ps").json()["cooled_down"] == []


def test_fallback_on_context_overflow(gw: BackgroundServer) -> None:
    long = "Please read this carefully. " * 60  # ~360 tokens: more than tiny's 128
    for stream in (False, True):
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": long + "Say OK."}],
            "stream": stream,
        }
        resp = httpx.post(gw.base_url + "/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=120)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-enginehouse-fallback"] == f"tiny, {MODEL}"


def test_a_mid_stream_failure_ends_in_an_explicit_error(gw: BackgroundServer) -> None:
    with httpx.stream(
        "POST",
        gw.base_url + "/v1/chat/completions",
        json={"model": "cutter", "messages": HI, "stream": True},
        timeout=60,
    ) as resp:
        assert resp.status_code == 200 and resp.headers["x-enginehouse-model"] == "cutter"
        events = [ln for ln in resp.iter_lines() if ln.startswith("data:")]
    assert '"content":"Hi"' in events[0]
    assert "error" in orjson.loads(events[-1][5:]) and "closed the stream early" in events[-1]
    lines = []
    with httpx.stream(
        "POST", gw.base_url + "/api/chat", json={"model": "cutter", "messages": HI}, timeout=60
    ) as resp:
        assert resp.status_code == 200
        lines = [orjson.loads(ln) for ln in resp.iter_lines() if ln]
    assert lines[0]["message"]["content"] == "Hi" and "error" in lines[-1]


def test_when_every_candidate_fails_the_client_reads_each(gw: BackgroundServer) -> None:
    resp = httpx.post(
        gw.base_url + "/v1/chat/completions", json={"model": "nothing-here", "messages": HI}, timeout=30
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    resp = httpx.post(gw.base_url + "/api/chat", json={"model": "gpt-4o-mimi", "messages": HI}, timeout=30)
    assert resp.status_code == 404 and "gpt-4o-mini" in resp.json()["error"]
    resp = httpx.post(gw.base_url + "/api/chat", json={"model": "doomed", "messages": HI}, timeout=30)
    assert resp.status_code == 503 and resp.headers["retry-after"]
    message = resp.json()["error"]
    assert message.startswith("every candidate for 'doomed' failed: doomed (unreachable: ")
    assert "huge2 (no-fit: " in message
    resp = httpx.post(
        gw.base_url + "/v1/chat/completions", json={"model": "doomed", "messages": HI}, timeout=30
    )
    err = resp.json()["error"]
    assert resp.status_code == 503 and err["code"] == "all_candidates_failed" and "huge2" in err["message"]
