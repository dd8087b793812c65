"""Embeddings, per-request context, auth, limits and disconnects, against a real runner."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import ollama
import openai
import pytest

from enginehouse.config import Config
from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL

pytestmark = pytest.mark.slow


def test_ollama_embed_and_legacy_embeddings(server) -> None:
    client = ollama.Client(host=server.base_url)
    resp = client.embed(model=MODEL, input=["The sky is blue.", "Paris is in France."])
    assert len(resp.embeddings) == 2
    assert len(resp.embeddings[0]) == 576  # SmolLM2-135M's embedding length
    assert resp.embeddings[0] != resp.embeddings[1]
    assert math.isclose(sum(x * x for x in resp.embeddings[0]), 1.0, rel_tol=1e-3)  # normalised
    assert resp.prompt_eval_count > 0
    legacy = client.embeddings(model=MODEL, prompt="The sky is blue.")
    assert len(legacy.embedding) == 576
    short = client.embed(model=MODEL, input="The sky is blue.", dimensions=64)
    assert len(short.embeddings[0]) == 64
    assert math.isclose(sum(x * x for x in short.embeddings[0]), 1.0, rel_tol=1e-6)
    # The chat runner and the embedding runner are separate, and ps shows both apart.
    names = [m.name for m in client.ps().models]
    assert MODEL in [n.split(" ")[0] for n in names]


def test_openai_embeddings(server) -> None:
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
    resp = oai.embeddings.create(model=MODEL, input=["hello", "world"])
    assert [d.index for d in resp.data] == [0, 1]
    assert len(resp.data[0].embedding) == 576


def test_openai_model_by_id_and_unknown(server) -> None:
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
    assert oai.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope:1b")


def test_openai_accepts_ollama_options_and_bounds_n(server) -> None:
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
    resp = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_completion_tokens=4,
        extra_body={"options": {"num_ctx": 2048, "temperature": 0}},
    )
    assert resp.usage.completion_tokens <= 4
    ps = httpx.get(server.base_url + "/api/ps").json()["models"]
    assert any(m["name"] == MODEL and m["context_length"] >= 2048 for m in ps)  # reloaded bigger
    with pytest.raises(openai.BadRequestError, match="'n'"):
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=100)
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            extra_body={"options": {"temperature": "hot"}},
        )


def test_capabilities_the_model_lacks_are_refused(server) -> None:
    client = ollama.Client(host=server.base_url)  # (tools it has: tests/integration/test_open_webui_tools.py)
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], think=True)
    assert err.value.status_code == 400 and "does not support" in err.value.error
    with pytest.raises(ollama.ResponseError, match="does not support vision"):
        client.generate(model=MODEL, prompt="What is this?", images=[b"\x89PNG\r\n\x1a\n"])


def test_client_disconnect_stops_the_generation(server) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Count to one thousand."}],
                "options": {"num_predict": 4000, "temperature": 0},
            }
            async with client.stream("POST", server.base_url + "/api/chat", json=body) as resp:
                lines = 0
                async for _ in resp.aiter_lines():
                    lines += 1
                    if lines == 5:
                        break
        loaded = server.gateway.scheduler.get(MODEL)
        assert loaded is not None
        deadline = time.monotonic() + 10
        async with httpx.AsyncClient(headers=loaded.engine.request_headers) as client:
            while True:
                slots = (await client.get(loaded.engine.base_url + "/slots")).json()
                if not any(s["is_processing"] for s in slots):
                    break
                assert time.monotonic() < deadline, "the runner kept generating after the client left"
                await asyncio.sleep(0.1)
        assert loaded.in_flight == 0

    asyncio.run(scenario())


def test_api_key_and_body_limit(server_config: Config, tmp_path) -> None:
    config = server_config.with_(home=tmp_path, api_key="s3cret", max_body_mib=1)
    with BackgroundServer(config) as srv:
        assert httpx.get(srv.base_url + "/api/version").status_code == 200  # health stays open
        r = httpx.get(srv.base_url + "/api/tags")
        assert r.status_code == 401 and "API key" in r.json()["error"]
        r = httpx.get(srv.base_url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        oai = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="s3cret")
        assert MODEL in [m.id for m in oai.models.list()]
        assert MODEL in [
            m.model
            for m in ollama.Client(host=srv.base_url, headers={"Authorization": "Bearer s3cret"})
            .list()
            .models
        ]
        big = b'{"model": "x", "prompt": "' + b"a" * (2 * 1024 * 1024) + b'"}'
        r = httpx.post(
            srv.base_url + "/api/generate", content=big, headers={"Authorization": "Bearer s3cret"}
        )
        assert r.status_code == 413 and "too large" in r.json()["error"]


def test_queue_full_gives_503_with_retry_after_on_both_doors(server_config: Config, tmp_path) -> None:
    config = server_config.with_(home=tmp_path, num_parallel=1, max_queue=0)
    with BackgroundServer(config) as srv:
        long = {
            "model": MODEL,
            # Greedy, this answer is 279 tokens long ("Count to a thousand." stops after 28 greedy
            # tokens and, sampled, sometimes before the second request arrives).
            "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
            "options": {"num_predict": 400, "temperature": 0, "seed": 1},
        }

        async def scenario() -> None:
            async with httpx.AsyncClient(timeout=120) as client:
                await client.post(srv.base_url + "/api/generate", json={"model": MODEL, "prompt": ""})
                async with client.stream("POST", srv.base_url + "/api/chat", json=long) as first:
                    async for _ in first.aiter_lines():
                        break  # the one slot is generating
                    busy = await client.post(srv.base_url + "/api/chat", json=long)
                    assert busy.status_code == 503 and "busy" in busy.json()["error"]
                    assert int(busy.headers["Retry-After"]) >= 1
                    oai = await client.post(
                        srv.base_url + "/v1/chat/completions",
                        json={"model": MODEL, "messages": long["messages"]},
                    )
                    assert oai.status_code == 503 and oai.json()["error"]["code"] == "server_busy"

        asyncio.run(scenario())


def test_num_ctx_above_the_trained_context_is_clamped_and_said(server) -> None:
    body = {
        "model": MODEL,
        "prompt": "Hi",
        "stream": False,
        "options": {"num_ctx": 100_000, "num_predict": 2},
    }
    r = httpx.post(server.base_url + "/api/generate", json=body, timeout=120)
    assert r.status_code == 200
    assert r.headers["X-Enginehouse-Num-Ctx"].startswith("8192; asked 100000")
    loaded = server.gateway.scheduler.get(MODEL)
    assert loaded is not None and loaded.ctx_per_slot == 8192
    oai = httpx.post(
        server.base_url + "/v1/chat/completions",
        timeout=120,
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2,
            "stream": True,
            "options": {"num_ctx": 100_000},
        },
    )
    assert oai.status_code == 200 and "X-Enginehouse-Num-Ctx" in oai.headers
