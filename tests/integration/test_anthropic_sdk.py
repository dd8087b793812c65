"""Anthropic's door end to end with the official ``anthropic`` SDK, against a real gateway and a real
llama-server on the bundled model (its Go template: the gateway renders the prompt), with an API key
set so that both ways of sending it are exercised."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import jsonschema
import ollama
import orjson
import pytest
from aiohttp import web

from enginehouse.config import Config
from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL
from tests.fakes.openai_upstream import OpenAIUpstream, sse_chunk

pytestmark = pytest.mark.slow

KEY = "test-anthropic-key"
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"name": "get_weather", "description": "Current weather of a city", "input_schema": CITY}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
HI = [{"role": "user", "content": "Say hello."}]
# This SDK's create() has no temperature parameter (the door takes it, as Anthropic's API does).
T0: dict = {"extra_body": {"temperature": 0}}
# A Go template without a tool section: a chat with tools then goes to llama-server's own template.
PLAIN = "plain-chatml:latest"
PLAIN_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def prompt_of(message: anthropic.types.Message) -> int:
    """The whole prompt: the tokens llama-server took from its prompt cache are reported apart."""
    return message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)


class CuttingUpstream(OpenAIUpstream):
    """An OpenAI-compatible engine that sends one chunk and drops the connection: what a crash
    mid-answer looks like to the gateway (a real runner cannot be made to do it on demand)."""

    thread_name = "cutting-upstream"
    model_ids = ("cut",)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(sse_chunk({"delta": {"role": "assistant", "content": "Hi"}}))
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return out


@pytest.fixture(scope="module")
def srv(server_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    home: Path = tmp_path_factory.mktemp("anthropic-home")
    cutting = CuttingUpstream().start()
    (home / "enginehouse.toml").write_text(
        f'[upstreams.cutting]\nengine = "openai"\nurl = "http://127.0.0.1:{cutting.port}"\nmodels = []\n\n'
        '[models.cutter]\nengine = "openai"\nupstream = "cutting"\nremote_model = "cut"\n'
    )
    with BackgroundServer(server_config.with_(home=home, api_key=KEY)) as server:
        headers = {"Authorization": f"Bearer {KEY}"}
        ollama.Client(host=server.base_url, headers=headers).create(
            model=PLAIN, from_=MODEL, template=PLAIN_TEMPLATE
        )
        yield server
    cutting.stop()


@pytest.fixture(scope="module")
def client(srv: BackgroundServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.base_url, api_key=KEY, max_retries=0)  # sends x-api-key


def test_create_answers_a_message(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=20, messages=HI, **T0)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    assert [b.type for b in message.content] == ["text"] and message.content[0].text  # type: ignore[union-attr]
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert prompt_of(message) > 0 and 0 < message.usage.output_tokens <= 20


def test_max_tokens_cuts_the_answer(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Write a long story."}]
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2


def test_system_as_string_and_as_blocks(client: anthropic.Anthropic) -> None:
    system = "You are a pirate."
    as_string = client.messages.create(model=MODEL, max_tokens=8, system=system, messages=HI, **T0)
    as_blocks = client.messages.create(
        model=MODEL,
        max_tokens=8,
        system=[{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        messages=HI,
        **T0,
    )
    plain = client.messages.create(model=MODEL, max_tokens=8, messages=HI, **T0)
    assert as_string.content == as_blocks.content  # the same prompt either way
    assert prompt_of(as_string) == prompt_of(as_blocks) > prompt_of(plain)
    # a system role inside messages (as coding agents send it) is the same system prompt
    inline = client.messages.create(
        model=MODEL,
        max_tokens=8,
        messages=[{"role": "system", "content": system}, *HI],  # type: ignore[list-item]
        **T0,
    )
    assert prompt_of(inline) == prompt_of(as_string)
    assert inline.content == as_string.content


def test_stream_text_and_event_types(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=16, messages=HI, **T0) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert prompt_of(final) > 0 and final.usage.output_tokens > 0
    once = client.messages.create(model=MODEL, max_tokens=16, messages=HI, **T0)
    assert once.content[0].text == text  # type: ignore[union-attr]
    events = list(client.messages.create(model=MODEL, max_tokens=16, messages=HI, **T0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert events[-2].delta.stop_reason in ("end_turn", "max_tokens")  # type: ignore[union-attr]


def test_the_wire_has_named_events_and_a_ping(srv: BackgroundServer) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": HI, "stream": True}
    with httpx.stream(
        "POST", srv.base_url + "/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=60
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("event: ")]
    names = [line.removeprefix("event: ") for line in lines]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-1] == "message_stop"


def test_stop_sequences_end_the_answer_and_are_named(client: anthropic.Anthropic) -> None:
    free = client.messages.create(model=MODEL, max_tokens=24, messages=HI, **T0)
    text = free.content[0].text  # type: ignore[union-attr]
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]
    cut = client.messages.create(
        model=MODEL, max_tokens=24, messages=HI, **T0, stop_sequences=["never-there", stop]
    )
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == text[: text.find(stop)]  # type: ignore[union-attr]
    with client.messages.stream(
        model=MODEL, max_tokens=24, messages=HI, **T0, stop_sequences=[stop]
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text[: text.find(stop)]
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_count_tokens_matches_what_a_generation_counts(client: anthropic.Anthropic) -> None:
    system = "You are terse."
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=ASK)
    answered = client.messages.create(model=MODEL, max_tokens=1, system=system, messages=ASK)
    assert counted.input_tokens == prompt_of(answered) > 0
    # a template without tools: the engine's own template renders the chat (llama-server /apply-template)
    counted = client.messages.count_tokens(model=PLAIN, messages=ASK, tools=[WEATHER])  # type: ignore[list-item]
    answered = client.messages.create(model=PLAIN, max_tokens=1, messages=ASK, tools=[WEATHER])  # type: ignore[list-item]
    assert counted.input_tokens == prompt_of(answered) > 0


def test_tool_round_trip(client: anthropic.Anthropic) -> None:
    first = client.messages.create(
        model=MODEL,
        max_tokens=60,
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "any"},
        **T0,
    )
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, CITY)
    history = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 24 C"}],
        },
    ]
    answer = client.messages.create(
        model=MODEL,
        max_tokens=30,
        messages=history,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "none"},
        **T0,
    )
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert answer.content and all(b.type == "text" for b in answer.content)
    # streamed, a forced call arrives as a tool_use block with its input in input_json_delta pieces
    with client.messages.stream(
        model=MODEL,
        max_tokens=60,
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        **T0,
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    block = next(b for b in final.content if b.type == "tool_use")
    assert block.name == "get_weather" and block.input == uses[0].input


def test_structured_output_follows_the_schema(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
    }
    message = client.messages.create(
        model=MODEL,
        max_tokens=60,
        messages=ASK,
        output_config={"format": {"type": "json_schema", "schema": schema}},
        **T0,
    )
    jsonschema.validate(json.loads(message.content[0].text), schema)  # type: ignore[union-attr]


def test_errors_in_anthropics_shape(srv: BackgroundServer, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model:1b", max_tokens=5, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=MODEL, max_tokens=0, messages=HI)
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in bad.value.body["error"]["message"]  # type: ignore[index]
    url_image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError, match="base64"):
        client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": [url_image]}])  # type: ignore[list-item]
    wrong = anthropic.Anthropic(base_url=srv.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        wrong.messages.create(model=MODEL, max_tokens=5, messages=HI)
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.count_tokens(model=MODEL, messages=HI)
    # the browser guard: a page from another origin
    r = httpx.post(
        srv.base_url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 5, "messages": HI},
        headers={"x-api-key": KEY, "Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    assert r.json() == {
        "type": "error",
        "error": {"type": "permission_error", "message": r.json()["error"]["message"]},
    }


def test_a_bearer_token_works_too(srv: BackgroundServer) -> None:
    bearer = anthropic.Anthropic(base_url=srv.base_url, auth_token=KEY, api_key=None, max_retries=0)
    message = bearer.messages.create(
        model=MODEL, max_tokens=3, messages=HI, extra_headers={"anthropic-version": "2023-06-01"}
    )
    assert message.content
    r = httpx.post(
        srv.base_url + "/v1/messages/count_tokens",
        json={"model": MODEL, "messages": HI},
        headers={"Authorization": f"Bearer {KEY}"},  # and no anthropic-version: not required
    )
    assert r.status_code == 200 and r.json()["input_tokens"] > 0


def test_metrics_count_the_anthropic_door(srv: BackgroundServer, client: anthropic.Anthropic) -> None:
    client.messages.create(model=MODEL, max_tokens=2, messages=HI)
    text = httpx.get(srv.base_url + "/metrics", headers={"x-api-key": KEY}).text
    lines = [line for line in text.splitlines() if line.startswith("enginehouse_requests_total{")]
    assert any('door="anthropic"' in line and 'endpoint="/v1/messages"' in line for line in lines)
    overhead = "enginehouse_gateway_overhead_seconds_count{"
    assert any(line.startswith(overhead) and 'door="anthropic"' in line for line in text.splitlines())


def test_an_engine_failing_mid_stream_ends_in_an_error_event(srv: BackgroundServer) -> None:
    body = {"model": "cutter", "max_tokens": 20, "messages": HI, "stream": True}
    with httpx.stream(
        "POST", srv.base_url + "/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=60
    ) as r:
        assert r.status_code == 200
        events = list(r.iter_lines())
    names = [line.removeprefix("event: ") for line in events if line.startswith("event: ")]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-1] == "error" and "message_stop" not in names
    error = orjson.loads(events[events.index("event: error") + 1].removeprefix("data: "))
    assert error == {
        "type": "error",
        "error": {"type": "api_error", "message": "the engine closed the stream early"},
    }


def test_count_tokens_is_refused_by_an_engine_that_cannot_count(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="not supported by this model's engine"):
        client.messages.count_tokens(model="cutter", messages=HI)
