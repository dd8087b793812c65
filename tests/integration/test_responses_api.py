"""The Responses door end to end: the official ``openai`` SDK's ``client.responses`` against a real gateway
and llama-server runner on the bundled model (a Go template with tools, rendered by the gateway)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL

pytestmark = pytest.mark.slow

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": CITY,
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def client_for(server: BackgroundServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)


def test_create_plain_and_cut_short(server: BackgroundServer) -> None:
    client = client_for(server)
    resp = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=24, temperature=0)
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.model == MODEL
    assert resp.status in ("completed", "incomplete") and resp.output_text
    assert resp.output[-1].type == "message" and resp.output[-1].content[0].type == "output_text"
    assert resp.usage is not None and resp.usage.input_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.temperature == 0 and resp.max_output_tokens == 24 and resp.store is True

    cut = client.responses.create(
        model=MODEL, input="Write a long story about a dragon.", max_output_tokens=5, temperature=0
    )
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and cut.usage.output_tokens == 5


def test_stream_true_is_the_event_sequence(server: BackgroundServer) -> None:
    client = client_for(server)
    events = list(
        client.responses.create(
            model=MODEL, input="Count to three.", max_output_tokens=20, temperature=0, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas and final.output_text == deltas and events[0].response.id == final.id


def test_the_stream_helper_accumulates_the_same_answer(server: BackgroundServer) -> None:
    client = client_for(server)
    with client.responses.stream(
        model=MODEL, input="Name a color.", max_output_tokens=16, temperature=0
    ) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == deltas and deltas


def test_instructions_are_a_system_message_and_echoed(server: BackgroundServer) -> None:
    client = client_for(server)
    plain = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, temperature=0)
    told = client.responses.create(
        model=MODEL,
        input="Hi",
        instructions="You are a pirate. Answer every question like a pirate would, with many arrs.",
        max_output_tokens=4,
        temperature=0,
    )
    assert told.instructions and told.instructions.startswith("You are a pirate")
    assert told.usage is not None and plain.usage is not None
    assert told.usage.input_tokens > plain.usage.input_tokens


def test_text_format_json_schema(server: BackgroundServer) -> None:
    client = client_for(server)
    resp = client.responses.create(
        model=MODEL,
        input="Invent a person. Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
        max_output_tokens=60,
        temperature=0,
    )
    assert resp.status == "completed"
    jsonschema.validate(json.loads(resp.output_text), PERSON)
    assert resp.text is not None and resp.text.format is not None and resp.text.format.type == "json_schema"


def test_function_tool_round_trip(server: BackgroundServer) -> None:
    client = client_for(server)
    first = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=60,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id
    args = json.loads(calls[0].arguments)
    jsonschema.validate(args, CITY)
    assert first.tools and first.tools[0].type == "function" and first.tool_choice == "required"

    result = {
        "type": "function_call_output",
        "call_id": calls[0].call_id,
        "output": '{"sky": "sunny", "c": 21}',
    }
    # The same conversation twice: sent whole, and chained on the stored first response.
    whole = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            *[c.model_dump() for c in calls],
            result,
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=30,
        temperature=0,
    )
    chained = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[result],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=30,
        temperature=0,
    )
    # The same prompt, token for token (the texts may differ: llama-server's sampling at temperature 0 is
    # not bit-exact across slots and its prompt cache).
    assert whole.output_text and chained.output_text
    assert chained.usage is not None and whole.usage is not None
    assert chained.usage.input_tokens == whole.usage.input_tokens
    assert chained.previous_response_id == first.id


def test_previous_response_id_reconstructs_the_conversation_without_old_instructions(
    server: BackgroundServer,
) -> None:
    client = client_for(server)
    first = client.responses.create(
        model=MODEL,
        input="My name is Ada.",
        instructions="Answer in one short sentence.",
        max_output_tokens=20,
        temperature=0,
    )
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input="What is my name?",
        max_output_tokens=20,
        temperature=0,
    )
    explicit = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "What is my name?"},
        ],
        max_output_tokens=20,
        temperature=0,
    )
    assert second.instructions is None
    assert second.usage is not None and explicit.usage is not None
    assert second.usage.input_tokens == explicit.usage.input_tokens
    assert second.output_text and explicit.output_text


def test_retrieve_list_input_items_and_delete(server: BackgroundServer) -> None:
    client = client_for(server)
    resp = client.responses.create(model=MODEL, input="Say yes.", max_output_tokens=8, temperature=0)
    got = client.responses.retrieve(resp.id)
    assert got.id == resp.id and got.output_text == resp.output_text and got.usage == resp.usage
    items = client.responses.input_items.list(resp.id)
    assert [(i.type, i.role) for i in items.data] == [("message", "user")]
    assert items.data[0].id.startswith("msg_")

    client.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=MODEL, previous_response_id=resp.id, input="And?", max_output_tokens=4)
    body: Any = info.value.body
    assert body["param"] == "previous_response_id" and "not found" in body["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(resp.id)


def test_store_false_keeps_nothing_and_entries_are_per_key(server: BackgroundServer) -> None:
    alice, bob = client_for(server, "alice-key"), client_for(server, "bob-key")
    unstored = alice.responses.create(model=MODEL, input="Hi", max_output_tokens=4, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(unstored.id)
    kept = alice.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
    assert alice.responses.retrieve(kept.id).id == kept.id
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model=MODEL, previous_response_id=kept.id, input="Hi", max_output_tokens=4)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
        ({"input": "hi", "temperature": 5}, 400, "temperature"),
        (
            {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 1}}}},
            400,
            None,
        ),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/a.png"}]}
                ]
            },
            400,
            None,
        ),
        ({"model": "no-such-model:1b", "input": "hi"}, 404, None),
    ],
)
def test_errors_are_openai_shaped(
    server: BackgroundServer, body: dict[str, Any], status: int, param: str | None
) -> None:
    resp = httpx.post(server.base_url + "/v1/responses", json={"model": MODEL, **body}, timeout=60)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
