"""Bad requests are refused at the door, in the door's dialect, before a real runner sees them, and the
runner serves the next ordinary request at once (issue 17, item 2).

Each refusal here once reached llama-server: a 100k-value enum held its HTTP thread compiling the
grammar, ``n_probs`` of 10^9 listed the vocabulary per token, a ``keep_alive`` of 10^20 overflowed
``/api/ps``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Say hi."}]
LOOP_TEMPLATE = "{% for i in range(10**9) %}x{% endfor %}"
HUGE_ENUM = {"type": "string", "enum": [f"v{i}" for i in range(100_000)]}


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)  # the runner is loaded
    return client


@pytest.fixture(scope="module")
def usual(oai: openai.OpenAI) -> float:
    """Seconds an ordinary chat takes here now: on a shared 2-core machine it is not always small."""
    return min(timed_chat(oai) for _ in range(3))


@pytest.fixture(scope="module")
def oclient(server) -> ollama.Client:
    return ollama.Client(host=server.base_url)


def timed_chat(oai: openai.OpenAI) -> float:
    started = time.monotonic()
    answer = oai.chat.completions.create(model=MODEL, messages=HI, max_tokens=4, temperature=0)
    assert answer.choices[0].message.content is not None
    return time.monotonic() - started


def ordinary_chat_is_fast(oai: openai.OpenAI, usual: float) -> None:
    """The next ordinary chat answers within a second of its usual time: nothing was left stuck."""
    assert timed_chat(oai) < usual + 1.0


def image_message(url: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is it?"},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }


def tool(parameters: Any) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


OPENAI_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "a 100k-value enum",
        {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": HUGE_ENUM}}},
        "response_format.json_schema.schema",
    ),
    (
        "an invalid regex pattern",
        {"extra_body": {"json_schema": {"type": "string", "pattern": "^(a$"}}},
        "json_schema.pattern",
    ),
    ("a malformed grammar", {"extra_body": {"grammar": 'root ::= ("a" | undefined'}}, "grammar"),
    (
        "a tool with a pathological parameters schema",
        {"tools": tool({"type": "object", "properties": {f"p{i}": HUGE_ENUM for i in range(3)}})},
        "tools[0].function.parameters",
    ),
    ("n_probs 10^9", {"extra_body": {"n_probs": 10**9}}, "n_probs"),
    ("logit_bias as a list", {"extra_body": {"logit_bias": [[1, 5.0]]}}, "logit_bias"),
    ("max_tokens 0", {"max_tokens": 0}, "max_tokens"),
    ("content of a wrong type", {"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    # llama-server fetches an http(s) image link itself: a request must not make the machine fetch
    (
        "an image link",
        {"messages": [image_message("http://127.0.0.1:9/cat.png")]},
        "messages.content.image_url",
    ),
    ("a file URL", {"messages": [image_message("file:///etc/passwd")]}, "messages.content.image_url"),
    # vLLM renders a request's own template: a loop of 10^9 steps would stall it
    ("a client chat template", {"extra_body": {"chat_template": LOOP_TEMPLATE}}, "chat_template"),
    (
        "a chat template smuggled in chat_template_kwargs",
        {"extra_body": {"chat_template_kwargs": {"chat_template": LOOP_TEMPLATE}}},
        "chat_template_kwargs.chat_template",
    ),
]


@pytest.mark.parametrize(("case", "extra", "param"), OPENAI_CASES, ids=[c for c, _, _ in OPENAI_CASES])
def test_the_openai_door_refuses_before_the_engine_and_still_serves(
    oai: openai.OpenAI, usual: float, case: str, extra: dict[str, Any], param: str
):
    kwargs: dict[str, Any] = {"model": MODEL, "messages": HI, "max_tokens": 4, **extra}
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(**kwargs)
    assert time.monotonic() - started < usual + 1.0, f"{case}: refused, but slowly"
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"
    assert body["param"] == param
    assert param.split("[")[0].split(".")[0] in body["message"]
    ordinary_chat_is_fast(oai, usual)


OLLAMA_CASES: list[tuple[str, Callable[[ollama.Client], Any], str]] = [
    ("a 100k-value enum format", lambda c: c.chat(MODEL, messages=HI, format=HUGE_ENUM), "format"),
    (
        "an invalid pattern in format",
        lambda c: c.chat(MODEL, messages=HI, format={"type": "string", "pattern": "^(?<=x)a$"}),
        "format.pattern",
    ),
    (
        "num_ctx past any model",
        lambda c: c.chat(MODEL, messages=HI, options={"num_ctx": 10**12}),
        "options.num_ctx",
    ),
    (
        "stop strings past the bound",
        lambda c: c.generate(MODEL, "hi", options={"stop": ["x"] * 100}),
        "options.stop",
    ),
]


@pytest.mark.parametrize(("case", "call", "field"), OLLAMA_CASES, ids=[c for c, _, _ in OLLAMA_CASES])
def test_the_ollama_door_refuses_naming_the_field_and_still_serves(
    oai: openai.OpenAI,
    usual: float,
    oclient: ollama.Client,
    case: str,
    call: Callable[[ollama.Client], Any],
    field: str,
):
    with pytest.raises(ollama.ResponseError) as caught:
        call(oclient)
    assert caught.value.status_code == 400
    assert f"'{field}" in caught.value.error
    ordinary_chat_is_fast(oai, usual)


def test_a_pathological_tool_schema_is_refused_on_the_ollama_door_too(
    server, oai: openai.OpenAI, usual: float
):
    body = {"model": MODEL, "messages": HI, "stream": False, "tools": tool({"properties": {"a": HUGE_ENUM}})}
    resp = httpx.post(f"{server.base_url}/api/chat", json=body, timeout=10)
    assert resp.status_code == 400
    assert "'tools[0].function.parameters'" in resp.json()["error"]
    ordinary_chat_is_fast(oai, usual)


def test_keep_alive_past_any_duration_is_clamped_to_forever_not_overflowed(
    server, oai: openai.OpenAI, usual: float, oclient: ollama.Client
):
    """As Ollama reads a negative keep_alive: kept loaded; its own parser overflows past ~292 years."""
    answer = oclient.chat(MODEL, messages=HI, keep_alive=10**20, options={"num_predict": 2})
    assert answer.message is not None
    loaded = {m.model: m for m in oclient.ps().models}
    assert MODEL in loaded
    assert loaded[MODEL].expires_at is not None and loaded[MODEL].expires_at.year > 2100
    oclient.chat(MODEL, messages=HI, keep_alive="5m", options={"num_predict": 2})  # back to ordinary
    ordinary_chat_is_fast(oai, usual)


def test_a_body_nested_past_the_bound_gets_the_dialects_400(server):
    deep: Any = 1
    for _ in range(200):
        deep = {"a": deep}
    for path, shape in (("/v1/chat/completions", dict), ("/api/chat", str)):
        resp = httpx.post(
            server.base_url + path, json={"model": MODEL, "messages": HI, "x": deep}, timeout=10
        )
        assert resp.status_code == 400
        assert isinstance(resp.json()["error"], shape)
