"""Anthropic's door, with tables: Messages bodies through the canonical call (and on to the engine's
body), stop sequences matched over streamed pieces, and canonical events through the encoder to
Anthropic's stream events and message object. Errors in Anthropic's shape and status."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from enginehouse.api.anthropic import CountTokensRequest, MessagesRequest
from enginehouse.api.anthropic_door import AnthropicEncoder, StopStep, messages_call
from enginehouse.api.prepare import ModelFacts, prepare_chat
from enginehouse.canonical import (
    Event,
    Finish,
    Message,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from enginehouse.engines.openai_wire import chat_request
from enginehouse.errors import (
    AllCandidatesFailed,
    DeadlineExceeded,
    Forbidden,
    InvalidRequest,
    ModelNotFound,
    RequestTooLarge,
    RunnerError,
    ServerBusy,
    Unauthorized,
    anthropic_error_body,
    anthropic_status,
)
from enginehouse.server.protocol import door_of, door_of_target

TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
FUNCTION = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": TOOL["input_schema"],
    },
}


def call_of(**body: Any):  # type: ignore[no-untyped-def]
    return messages_call(MessagesRequest.model_validate({"model": "m", "max_tokens": 16, **body}))


# -- requests -> calls ------------------------------------------------------------------------------

MESSAGE_CASES = [
    (
        "a string turn",
        {"messages": [{"role": "user", "content": "hi"}]},
        [Message("user", "hi")],
    ),
    (
        "system as a string",
        {"system": "be brief", "messages": [{"role": "user", "content": "hi"}]},
        [Message("system", "be brief"), Message("user", "hi")],
    ),
    (
        "system as text blocks",
        {
            "system": [
                {"type": "text", "text": "be"},
                {"type": "text", "text": "brief", "cache_control": {}},
            ],
            "messages": [{"role": "user", "content": "hi"}],
        },
        [Message("system", "be\nbrief"), Message("user", "hi")],
    ),
    (
        "a system role inside messages (coding agents send it)",
        {"messages": [{"role": "system", "content": "rules"}, {"role": "user", "content": "hi"}]},
        [Message("system", "rules"), Message("user", "hi")],
    ),
    (
        "text and image blocks",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAA"},
                        },
                        {"type": "text", "text": "this?"},
                    ],
                }
            ]
        },
        [Message("user", "what is\nthis?", ["AAA"])],
    ),
    (
        "a tool round trip: tool_use, then tool_result (string and blocks) before the user's text",
        {
            "messages": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "two calls", "signature": "x"},
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                        {
                            "type": "tool_use",
                            "id": "toolu_2",
                            "name": "get_weather",
                            "input": {"city": "Rome"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": [{"type": "text", "text": "rain"}],
                            "is_error": False,
                        },
                        {"type": "text", "text": "thanks"},
                    ],
                },
            ]
        },
        [
            Message("user", "weather in Paris and Rome?"),
            Message(
                "assistant",
                "Checking.",
                tool_calls=[
                    ToolCall("get_weather", {"city": "Paris"}, "toolu_1"),
                    ToolCall("get_weather", {"city": "Rome"}, "toolu_2"),
                ],
                thinking="two calls",
            ),
            Message("tool", "sunny", tool_call_id="toolu_1", tool_name="get_weather"),
            Message("tool", "rain", tool_call_id="toolu_2", tool_name="get_weather"),
            Message("user", "thanks"),
        ],
    ),
    (
        "redacted thinking is dropped",
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "redacted_thinking", "data": "zz"}, {"type": "text", "text": "yo"}],
                },
            ]
        },
        [Message("user", "hi"), Message("assistant", "yo")],
    ),
]


@pytest.mark.parametrize("body,expected", [c[1:] for c in MESSAGE_CASES], ids=[c[0] for c in MESSAGE_CASES])
def test_messages_become_canonical_messages(body: dict[str, Any], expected: list[Message]) -> None:
    assert call_of(**body).messages == expected


def test_sampling_tools_choice_and_thinking() -> None:
    call = call_of(
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        stop_sequences=["END"],
        metadata={"user_id": "u1"},
        stream=True,
        tools=[TOOL],
        tool_choice={"type": "any"},
        thinking={"type": "enabled", "budget_tokens": 2048},
    )
    # stop sequences stay out of the sampling: the door matches them (StopStep)
    assert call.sampling == {"max_tokens": 16, "temperature": 0.2, "top_p": 0.9, "top_k": 40}
    assert call.tools == [FUNCTION]
    assert call.tool_choice == "required"
    assert call.think is True
    assert call.stream is True


@pytest.mark.parametrize(
    "choice,expected",
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any", "disable_parallel_tool_use": True}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
        (None, None),
    ],
)
def test_tool_choice(choice: dict[str, Any] | None, expected: Any) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    assert call_of(**body).tool_choice == expected


@pytest.mark.parametrize(
    "thinking,expected",
    [({"type": "disabled"}, False), ({"type": "enabled", "budget_tokens": 1024}, True), (None, None)],
)
def test_thinking(thinking: dict[str, Any] | None, expected: Any) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if thinking is not None:
        body["thinking"] = thinking
    assert call_of(**body).think is expected


def test_output_config_format_is_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    call = call_of(
        messages=[], output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}}
    )
    assert call.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    assert call_of(messages=[], output_config={"effort": "high"}).response_format is None


def test_count_tokens_needs_no_max_tokens() -> None:
    call = messages_call(
        CountTokensRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    )
    assert call.sampling == {}
    assert call.messages == [Message("user", "x")]


def test_call_reaches_the_engine_as_an_openai_chat() -> None:
    """Through prepare (no Go template) to the engine's body: tool results as tool messages."""
    call = call_of(
        messages=[
            {"role": "user", "content": "w?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "P"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
        ],
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    body = chat_request(prepare_chat(call, ModelFacts(params={})).call, "served")[1]  # type: ignore[arg-type]
    assert body["max_tokens"] == 16
    assert body["tools"] == [FUNCTION]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["messages"][1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"P"}',
    }
    assert body["messages"][2] == {
        "role": "tool",
        "content": "sunny",
        "name": "get_weather",
        "tool_call_id": "t1",
    }


REFUSED = [
    ("max_tokens missing", {"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ("max_tokens zero", {"max_tokens": 0, "messages": []}, "max_tokens"),
    ("temperature above 1", {"max_tokens": 5, "temperature": 1.5, "messages": []}, "temperature"),
    (
        "a role Anthropic lacks",
        {"max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]},
        "messages[0].role",
    ),
    (
        "an image URL",
        {
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": "http://x/a.png"}}],
                }
            ],
        },
        "messages[0].content[0].source.type",
    ),
    (
        "a document block",
        {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
        "messages[0].content[0].type",
    ),
    (
        "a server tool",
        {"max_tokens": 5, "messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        "tools[0].type",
    ),
    (
        "a tool without input_schema",
        {"max_tokens": 5, "messages": [], "tools": [{"name": "f"}]},
        "tools[0].input_schema",
    ),
    (
        "a tool schema that is no schema",
        {"max_tokens": 5, "messages": [], "tools": [{"name": "f", "input_schema": {"type": "nonsense"}}]},
        "tools[0].input_schema.type",
    ),
    (
        "a tool schema with a lookaround",
        {
            "max_tokens": 5,
            "messages": [],
            "tools": [{"name": "f", "input_schema": {"type": "string", "pattern": "(?=a)"}}],
        },
        "tools[0].input_schema.pattern",
    ),
    (
        "an unknown tool_choice",
        {"max_tokens": 5, "messages": [], "tools": [TOOL], "tool_choice": {"type": "all"}},
        "tool_choice.type",
    ),
    (
        "an unknown thinking type",
        {"max_tokens": 5, "messages": [], "thinking": {"type": "maybe"}},
        "thinking.type",
    ),
]


@pytest.mark.parametrize("body,param", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    from enginehouse.api.invalid import invalid_request

    try:
        messages_call(MessagesRequest.model_validate({"model": "m", **body}))
    except ValidationError as exc:
        error = invalid_request(exc)
    except InvalidRequest as exc:
        error = exc
    else:
        pytest.fail("accepted")
    assert error.param == param
    assert anthropic_error_body(error)["error"]["type"] == "invalid_request_error"


# -- stop sequences ---------------------------------------------------------------------------------


def run_events(step: Any, events: list[Event]) -> list[Event]:
    """The events a step lets through, as the relay applies it (it reads no more once the step is done)."""
    out: list[Event] = []
    for event in events:
        out += step.feed(event)
        if step.done:
            return out
    return out + step.end()


def texts(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


STOPS = [
    ("no match: the text passes, the engine's finish too", ["END"], ["Hello", " world"], "Hello world", None),
    ("a match inside one piece", ["END"], ["Hello END more"], "Hello ", "END"),
    ("a match split across pieces", ["END"], ["Hello E", "N", "D more"], "Hello ", "END"),
    ("a false start is released", ["END"], ["Hello E", "NO"], "Hello ENO", None),
    ("the earliest of several", ["b", "a"], ["xxa b"], "xx", "a"),
    ("a held tail is flushed at the end", ["END"], ["Hello EN"], "Hello EN", None),
]


@pytest.mark.parametrize("sequences,pieces,text,matched", [c[1:] for c in STOPS], ids=[c[0] for c in STOPS])
def test_stop_sequences(sequences: list[str], pieces: list[str], text: str, matched: str | None) -> None:
    events: list[Event] = [TextDelta(p) for p in pieces] + [Finish("stop"), Usage(3, 4)]
    out = run_events(StopStep(sequences), events)
    assert texts(out) == text
    finishes = [e for e in out if isinstance(e, Finish)]
    assert finishes[0].stop_sequence == matched
    if matched:  # the answer ends at the match: the relay then closes the engine's stream
        assert isinstance(out[-1], Finish)


def test_held_text_goes_before_a_tool_call() -> None:
    out = run_events(StopStep(["END"]), [TextDelta("a E"), ToolCallDelta(0, "f", "{}"), Finish("tool_calls")])
    assert isinstance(out[0], TextDelta) and out[0].text == "a "
    assert isinstance(out[1], TextDelta) and out[1].text == "E"
    assert isinstance(out[2], ToolCallDelta)


# -- events -> Anthropic's stream and message ---------------------------------------------------------


def encode(events: list[Event]) -> tuple[AnthropicEncoder, list[dict[str, Any]]]:
    enc = AnthropicEncoder("asked:model", time.monotonic())
    out: list[dict[str, Any]] = []
    for event in events:
        enc.tally.see(event, time.monotonic())  # the relay's order: tally first, then the encoder
        out += enc.objects(event)
    return enc, out + enc.closing()


def shape(objects: list[dict[str, Any]]) -> list[str]:
    """Each event's type, with the block kind or delta kind where it has one."""
    out = []
    for o in objects:
        kind = o["type"]
        if kind == "content_block_start":
            kind += ":" + o["content_block"]["type"]
        elif kind == "content_block_delta":
            kind += ":" + o["delta"]["type"]
        out.append(kind)
    return out


def test_text_stream_is_anthropics_event_sequence() -> None:
    enc, objects = encode([TextDelta("Hel"), TextDelta("lo"), Finish("stop"), Usage(7, 2)])
    assert shape(objects) == [
        "message_start",
        "ping",
        "content_block_start:text",
        "content_block_delta:text_delta",
        "content_block_delta:text_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = objects[0]["message"]
    assert start["id"].startswith("msg_") and start["model"] == "asked:model" and start["content"] == []
    assert start["role"] == "assistant" and start["stop_reason"] is None
    assert objects[3] == {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hel"},
    }
    assert objects[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 7, "cache_read_input_tokens": 0, "output_tokens": 2},
    }
    assert enc.fold(objects) == {
        "id": enc.id,
        "type": "message",
        "role": "assistant",
        "model": "asked:model",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 7, "cache_read_input_tokens": 0, "output_tokens": 2},
    }


def test_usage_splits_the_prompt_cache_out() -> None:
    """llama-server's usage counts the whole prompt; its timings say how much came from its cache."""
    timings = {"prompt_n": 3, "cache_n": 17, "predicted_n": 5}
    enc, objects = encode([TextDelta("a"), Finish("stop"), Usage(20, 5, timings)])
    usage = {"input_tokens": 3, "cache_read_input_tokens": 17, "output_tokens": 5}
    assert objects[-2]["usage"] == usage and enc.fold(objects)["usage"] == usage
    enc, objects = encode([TextDelta("a"), Finish("stop"), Usage(timings=timings)])  # no usage: timings
    assert objects[-2]["usage"] == usage


def test_thinking_text_and_tool_use_blocks() -> None:
    enc, objects = encode(
        [
            ReasoningDelta("hmm"),
            TextDelta("Let me check."),
            ToolCallDelta(0, "get_weather", '{"city":', "call_1"),
            ToolCallDelta(0, "", '"Paris"}'),
            ToolCallDelta(1, "get_weather", '{"city":"Rome"}'),
            Finish("tool_calls"),
            Usage(20, 9),
        ]
    )
    assert shape(objects) == [
        "message_start",
        "ping",
        "content_block_start:thinking",
        "content_block_delta:thinking_delta",
        "content_block_stop",
        "content_block_start:text",
        "content_block_delta:text_delta",
        "content_block_stop",
        "content_block_start:tool_use",
        "content_block_delta:input_json_delta",
        "content_block_delta:input_json_delta",
        "content_block_stop",
        "content_block_start:tool_use",
        "content_block_delta:input_json_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    indexes = [o["index"] for o in objects if "index" in o]
    assert indexes == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert objects[8]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }
    assert objects[-2]["delta"]["stop_reason"] == "tool_use"
    message = enc.fold(objects)
    assert message["content"][0] == {"type": "thinking", "thinking": "hmm", "signature": ""}
    assert message["content"][2] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert message["content"][3]["id"].startswith("toolu_")
    assert message["content"][3]["input"] == {"city": "Rome"}


@pytest.mark.parametrize(
    "events,reason,sequence",
    [
        ([TextDelta("a"), Finish("length")], "max_tokens", None),
        ([TextDelta("a"), Finish("stop", "END")], "stop_sequence", "END"),
        ([TextDelta("a"), Finish("stop")], "end_turn", None),
        ([ToolCallDelta(0, "f", '{"x'), Finish("length")], "max_tokens", None),
    ],
)
def test_stop_reasons(events: list[Event], reason: str, sequence: str | None) -> None:
    enc, objects = encode(events)
    assert objects[-2]["delta"] == {"stop_reason": reason, "stop_sequence": sequence}
    message = enc.fold(objects)
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


def test_an_empty_answer_still_opens_and_closes_the_message() -> None:
    enc, objects = encode([Finish("stop")])
    assert shape(objects) == ["message_start", "ping", "message_delta", "message_stop"]
    assert enc.fold(objects)["content"] == []


def test_frames_are_named_sse_events() -> None:
    enc = AnthropicEncoder("m", time.monotonic())
    assert enc.frame({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
    error = enc.error(RunnerError("the engine closed the stream early"))
    assert error.startswith(b"event: error\ndata: ")
    assert orjson.loads(error.split(b"data: ", 1)[1]) == {
        "type": "error",
        "error": {"type": "api_error", "message": "the engine closed the stream early"},
    }


# -- errors -------------------------------------------------------------------------------------------

ERRORS = [
    (InvalidRequest("bad"), 400, "invalid_request_error"),
    (Unauthorized("key"), 401, "authentication_error"),
    (Forbidden("origin"), 403, "permission_error"),
    (ModelNotFound("nope"), 404, "not_found_error"),
    (RequestTooLarge("big"), 413, "request_too_large"),
    (ServerBusy(), 529, "overloaded_error"),
    (AllCandidatesFailed("all failed", []), 529, "overloaded_error"),
    (RunnerError("crashed"), 502, "api_error"),
    (DeadlineExceeded("slow"), 504, "api_error"),
    (RuntimeError("secret /path"), 500, "api_error"),
]


@pytest.mark.parametrize("exc,status,kind", ERRORS, ids=[type(e[0]).__name__ for e in ERRORS])
def test_errors_in_anthropics_shape(exc: BaseException, status: int, kind: str) -> None:
    assert anthropic_status(exc) == status
    body = anthropic_error_body(exc)
    assert body["type"] == "error" and body["error"]["type"] == kind
    if not isinstance(exc, ModelNotFound | ServerBusy | AllCandidatesFailed | RuntimeError):
        assert body["error"]["message"] == exc.args[0]
    assert "secret" not in body["error"]["message"]


def test_an_http_status_picks_the_type() -> None:
    """aiohttp's own errors (an unknown path, a wrong method) arrive as InvalidRequest with a status."""
    assert anthropic_error_body(InvalidRequest("Not Found"), 404)["error"]["type"] == "not_found_error"
    assert (
        anthropic_error_body(InvalidRequest("Method Not Allowed"), 405)["error"]["type"]
        == "invalid_request_error"
    )


@pytest.mark.parametrize(
    "path,door",
    [
        ("/v1/messages", "anthropic"),
        ("/v1/messages/count_tokens", "anthropic"),
        ("/v1/messagesx", "openai"),
        ("/v1/chat/completions", "openai"),
        ("/api/chat", "ollama"),
    ],
)
def test_door_of_path(path: str, door: str) -> None:
    assert door_of(path) == door
    assert door_of_target(f"POST {path} HTTP/1.1".encode()[:24]) == door  # what a broken request shows
