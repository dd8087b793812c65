"""Remote engines, against real servers: a second enginehouse (which speaks Ollama's API) as an ``ollama``
upstream, and a llama-server started with ``--api-key`` as an ``openai`` upstream. The first gateway
serves neither model itself; both doors reach them through it, with the official clients."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL, free_port, make_config, wait_http

pytestmark = pytest.mark.slow

KEY = "sk-lab-secret"
HI = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 8, "seed": 1}


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path) -> Iterator[BackgroundServer]:
    """Another enginehouse, with its own home and port: the Ollama upstream."""
    with BackgroundServer(make_config(tmp_path_factory.mktemp("second"), llama_server_bin)) as srv:
        yield srv


@pytest.fixture(scope="module")
def lab(
    llama_server_bin: Path, bundled_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A llama-server that wants an API key: the OpenAI-compatible upstream."""
    port = free_port()
    log = (tmp_path_factory.mktemp("lab") / "llama.log").open("wb")
    proc = subprocess.Popen(
        [
            *(
                str(llama_server_bin),
                "--model",
                str(bundled_gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ),
            *("--alias", "smol-lab", "--api-key", KEY, "--ctx-size", "1024", "--parallel", "1"),
            *("--cache-ram", "0", "--no-webui", "--jinja"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, second: BackgroundServer, lab: str
) -> Iterator[BackgroundServer]:
    home = tmp_path_factory.mktemp("first")
    dead = free_port()
    (home / "enginehouse.toml").write_text(
        f"""
[aliases]
far = "far-smol"

[upstreams.second]
engine = "ollama"
url = "{second.base_url}"

[upstreams.lab]
engine = "openai"
url = "{lab}"
api_key = "{KEY}"

[upstreams.dead]
engine = "ollama"
url = "http://127.0.0.1:{dead}"
models = ["ghost:1b"]

[models."far-smol"]
engine = "ollama"
upstream = "second"
remote_model = "{MODEL}"

[models."lab-smol"]
engine = "openai"
upstream = "lab"
remote_model = "smol-lab"
"""
    )
    with BackgroundServer(make_config(home, llama_server_bin)) as srv:
        yield srv


@pytest.fixture(scope="module")
def oc(gateway: BackgroundServer) -> ollama.Client:
    return ollama.Client(host=gateway.base_url)


@pytest.fixture(scope="module")
def oai(gateway: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="unused")


def test_remote_models_are_listed_on_both_doors(oc: ollama.Client, oai: openai.OpenAI) -> None:
    tags = {m.model: m for m in oc.list().models}
    assert {"far-smol", "lab-smol", "ghost:1b", "smol-lab"} <= set(tags)  # smol-lab: discovered at lab
    assert MODEL in tags  # the local store model, not shadowed by the one discovered at "second"
    ids = {m.id: m.owned_by for m in oai.models.list().data}
    assert ids["far-smol"] == "second" and ids["lab-smol"] == "lab" and ids["smol-lab"] == "lab"
    assert oai.models.retrieve("far").id == "far"  # an alias answers with its own name


def test_ollama_upstream_chat_and_generate_pass_through(oc: ollama.Client, second: BackgroundServer) -> None:
    reply = oc.chat(model="far-smol", messages=HI, options=GREEDY)
    assert reply.model == "far-smol"  # renamed back from the upstream's name
    assert reply.message.content and reply.eval_count > 0  # the upstream's own metrics
    parts = list(oc.chat(model="far", messages=HI, options=GREEDY, stream=True))
    assert len(parts) > 2 and parts[-1].done and all(p.model == "far" for p in parts)  # the name asked for
    assert "".join(p.message.content for p in parts) == reply.message.content  # greedy: same answer
    gen = oc.generate(model="far-smol", prompt="The capital of France is", options=GREEDY)
    assert gen.response and gen.done
    streamed = list(
        oc.generate(model="far-smol", prompt="The capital of France is", options=GREEDY, stream=True)
    )
    assert "".join(p.response for p in streamed) == gen.response
    # the request really went to the second gateway, which loaded the model itself
    assert [m["name"] for m in httpx.get(second.base_url + "/api/ps").json()["models"]] == [MODEL]


def test_ollama_upstream_embed(oc: ollama.Client, oai: openai.OpenAI) -> None:
    res = oc.embed(model="far-smol", input=["hello", "world"])
    assert len(res.embeddings) == 2 and len(res.embeddings[0]) == 576 and res.model == "far-smol"
    legacy = oc.embeddings(model="far-smol", prompt="hello")
    assert len(legacy.embedding) == 576
    vec = oai.embeddings.create(model="far-smol", input="hello").data[0].embedding  # the upstream's /v1
    assert len(vec) == 576


def test_ollama_upstream_on_the_openai_door(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model="far-smol", messages=HI, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert resp.choices[0].message.content
    stream = oai.chat.completions.create(model="far", messages=HI, max_tokens=8, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_openai_upstream_with_key_on_both_doors(oc: ollama.Client, oai: openai.OpenAI, lab: str) -> None:
    assert httpx.post(lab + "/v1/chat/completions", json={"messages": HI}).status_code == 401  # needs the key
    reply = oc.chat(model="lab-smol", messages=HI, options=GREEDY)
    assert reply.model == "lab-smol" and reply.message.content and reply.eval_count > 0
    parts = list(oc.chat(model="lab-smol", messages=HI, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == reply.message.content
    gen = oc.generate(model="lab-smol", prompt="Hello", options=GREEDY)
    assert gen.response and gen.done
    raw = oc.generate(model="lab-smol", prompt="The capital of France is", raw=True, options=GREEDY)
    assert raw.response  # a raw prompt goes to the upstream's /v1/completions
    resp = oai.chat.completions.create(model="lab-smol", messages=HI, max_tokens=8)  # type: ignore[arg-type]
    assert resp.choices[0].message.content and resp.model  # passed through as the upstream answered
    found = oai.chat.completions.create(model="smol-lab", messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert found.choices  # a discovered model, same upstream, same key


def test_show_and_ps_for_remote_models(gateway: BackgroundServer, oc: ollama.Client) -> None:
    shown = oc.show("far-smol")  # the Ollama upstream's own answer
    assert shown.modelinfo and shown.details.family == "llama"
    lab_show = oc.show("lab-smol")
    assert "completion" in (lab_show.capabilities or [])
    engines = {m["name"]: m["engine"] for m in httpx.get(gateway.base_url + "/api/ps").json()["models"]}
    assert engines.get("far-smol") == "ollama" and engines.get("lab-smol") == "openai"


def test_unreachable_upstream_is_a_clear_502(gateway: BackgroundServer) -> None:
    r = httpx.post(gateway.base_url + "/api/chat", json={"model": "ghost:1b", "messages": HI}, timeout=30)
    assert r.status_code == 502
    assert "upstream 'dead'" in r.json()["error"] and "unreachable" in r.json()["error"]
    r = httpx.post(gateway.base_url + "/v1/chat/completions", json={"model": "ghost:1b", "messages": HI})
    assert r.status_code == 502 and "[upstreams.dead]" in r.json()["error"]["message"]
