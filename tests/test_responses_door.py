"""The Responses door's converter pair, by tables: request bodies -> chat calls (and the 400s with
``param``), canonical events -> the response object and its event stream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from enginehouse.api.invalid import invalid_request
from enginehouse.api.responses_door import echo, messages_for, responses_call, with_ids
from enginehouse.api.responses_events import ResponsesEncoder
from enginehouse.api.responses_wire import ResponsesRequest
from enginehouse.canonical import (
    Finish,
    Message,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from enginehouse.errors import InvalidRequest, RunnerError

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather", "parameters": CITY}
IMAGE = "data:image/png;base64,iVBORw0KGgo="


def call_for(body: dict[str, Any], context: list[dict[str, Any]] | None = None) -> Any:
    return responses_call(ResponsesRequest.model_validate({"model": "m", **body}), context)


def plain(messages: list[Message]) -> list[tuple[Any, ...]]:
    return [
        (m.role, m.content, m.images, [(c.name, c.arguments, c.id) for c in m.tool_calls], m.tool_call_id)
        for m in messages
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"input": "hi"}, [("user", "hi", [], [], None)]),
        (
            {"input": "hi", "instructions": "Be brief."},
            [("system", "Be brief.", [], [], None), ("user", "hi", [], [], None)],
        ),
        (
            {
                "input": [
                    {"role": "developer", "content": "rules"},
                    {
                        "role": "user",
                        "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
                    },
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "c"}],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "see"},
                            {"type": "input_image", "image_url": IMAGE},
                        ],
                    },
                ]
            },
            [
                ("system", "rules", [], [], None),
                ("user", "ab", [], [], None),
                ("assistant", "c", [], [], None),
                ("user", "see", ["iVBORw0KGgo="], [], None),
            ],
        ),
        (
            {
                "input": [
                    {"role": "user", "content": "weather in Paris?"},
                    {
                        "type": "function_call",
                        "call_id": "call_1",
                        "name": "get_weather",
                        "arguments": '{"city":"Paris"}',
                    },
                    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                ]
            },
            [
                ("user", "weather in Paris?", [], [], None),
                ("assistant", "", [], [("get_weather", {"city": "Paris"}, "call_1")], None),
                ("tool", "sunny", [], [], "call_1"),
            ],
        ),
    ],
    ids=["string", "instructions", "parts-and-roles", "function-round-trip"],
)
def test_input_items_become_messages(body: dict[str, Any], expected: list[tuple[Any, ...]]) -> None:
    assert plain(call_for(body).messages) == expected


def test_tool_results_are_named_by_their_call_and_reasoning_joins_the_next_turn() -> None:
    items = [
        {"role": "user", "content": "q"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ]
    messages = messages_for([], items, None)
    assert messages[1].thinking == "think" and messages[1].tool_calls[0].name == "get_weather"
    assert messages[2].tool_name == "get_weather"


def test_a_follow_up_is_the_stored_conversation_then_the_new_input_without_old_instructions() -> None:
    context = [
        {"id": "msg_1", "type": "message", "role": "user", "content": "My name is Ada."},
        {
            "id": "msg_2",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Hello Ada.", "annotations": []}],
        },
    ]
    call = call_for({"input": "What is my name?", "instructions": "Answer in French."}, context)
    assert plain(call.messages) == [
        ("system", "Answer in French.", [], [], None),
        ("user", "My name is Ada.", [], [], None),
        ("assistant", "Hello Ada.", [], [], None),
        ("user", "What is my name?", [], [], None),
    ]


@pytest.mark.parametrize(
    ("body", "field", "value"),
    [
        (
            {"max_output_tokens": 20, "temperature": 0, "top_p": 0.5},
            "sampling",
            {"max_tokens": 20, "temperature": 0, "top_p": 0.5},
        ),
        (
            {"tools": [WEATHER]},
            "tools",
            [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "description": "Weather", "parameters": CITY},
                }
            ],
        ),
        ({"tools": [{**WEATHER, "strict": True}], "tool_choice": "required"}, "tool_choice", "required"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}},
            "tool_choice",
            {"type": "function", "function": {"name": "get_weather"}},
        ),
        ({"text": {"format": {"type": "text"}}}, "response_format", None),
        ({"text": {"format": {"type": "json_object"}}}, "response_format", {"type": "json_object"}),
        (
            {"text": {"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}}},
            "response_format",
            {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}},
        ),
        ({"reasoning": {"effort": "high"}}, "think", "high"),
        ({"reasoning": {"effort": "minimal"}}, "think", "low"),
        ({"reasoning": {"effort": "none"}}, "think", False),
        ({}, "think", None),
        ({"stream": True}, "stream", True),
        ({}, "stream", False),
    ],
)
def test_request_fields_map_onto_the_call(body: dict[str, Any], field: str, value: Any) -> None:
    assert getattr(call_for({"input": "hi", **body}), field) == value


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "hi", "tools": [{**WEATHER, "parameters": {"type": "nope"}}]}, "tools[0].parameters.type"),
        ({"input": "hi", "tool_choice": "required"}, "tool_choice"),
        (
            {"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}},
            "tool_choice",
        ),
        ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        (
            {
                "input": "hi",
                "text": {
                    "format": {
                        "type": "json_schema",
                        "name": "x",
                        "schema": {"type": "string", "pattern": "(?=a)"},
                    }
                },
            },
            "text.format.schema.pattern",
        ),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}
                ]
            },
            "input[0].content[0].image_url",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}]},
            "input[0].arguments",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": 5}]},
            "input[0].arguments",
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "computer_call_output"}]}, "input[0].type"),
        ({"input": ""}, "input"),
    ],
)
def test_what_the_door_refuses_names_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        call_for(body)
    assert info.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi", "temperature": 3}, "temperature"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "reasoning": {"effort": "max"}}, "reasoning.effort"),
        ({"input": "hi", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"input": 5}, "input"),
        ({"input": "hi", "tools": ["x"]}, "tools[0]"),
    ],
)
def test_envelope_validation_names_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as info:
        ResponsesRequest.model_validate({"model": "m", **body})
    assert invalid_request(info.value).param == param


def test_the_response_echoes_the_request_fields() -> None:
    req = ResponsesRequest.model_validate(
        {
            "model": "m",
            "input": "hi",
            "instructions": "I",
            "metadata": {"k": "v"},
            "store": False,
            "user": "u",
        }
    )
    echoed = echo(req)
    assert echoed["instructions"] == "I" and echoed["metadata"] == {"k": "v"}
    assert echoed["store"] is False and echoed["user"] == "u" and echoed["tool_choice"] == "auto"
    assert echoed["text"] == {"format": {"type": "text"}} and echoed["parallel_tool_calls"] is True


def test_stored_input_items_get_ids() -> None:
    items = with_ids([{"role": "user", "content": "x"}, {"id": "fc_1", "type": "function_call"}])
    assert items[0]["id"].startswith("msg_") and items[1]["id"] == "fc_1"


# ---- events -> response ---------------------------------------------------------------------------------
def encode(events: list[Any]) -> tuple[ResponsesEncoder, list[dict[str, Any]], list[dict[str, Any]]]:
    finals: list[dict[str, Any]] = []
    enc = ResponsesEncoder("asked", {"store": True}, 0.0, finals.append)
    objects: list[dict[str, Any]] = []
    for event in events:
        enc.tally.see(event, 1.0)
        objects += enc.objects(event)
    objects += enc.closing()
    return enc, objects, finals


def test_text_stream_is_the_documented_event_sequence() -> None:
    enc, objects, finals = encode([TextDelta("Hel"), TextDelta("lo"), Usage(5, 2), Finish("stop")])
    assert [o["type"] for o in objects] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [o["sequence_number"] for o in objects] == list(range(len(objects)))
    assert objects[0]["response"]["status"] == "in_progress" and objects[0]["response"]["output"] == []
    final = objects[-1]["response"]
    assert final["status"] == "completed" and final["model"] == "asked" and final["id"].startswith("resp_")
    assert final["output"][0]["content"][0]["text"] == "Hello" and final["output"][0]["status"] == "completed"
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["total_tokens"] == 7
    item_id = objects[2]["item"]["id"]
    assert all(o["item_id"] == item_id for o in objects[3:8])
    assert finals == [final] and enc.fold([]) == final


def test_a_cut_answer_is_incomplete_with_the_reason() -> None:
    _, objects, _ = encode([TextDelta("a"), Finish("length")])
    final = objects[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"


def test_reasoning_then_text_are_two_items() -> None:
    _, objects, _ = encode([ReasoningDelta("hmm"), TextDelta("yes"), Finish("stop")])
    kinds = [o["type"] for o in objects]
    assert kinds[2:7] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
    ]
    output = objects[-1]["response"]["output"]
    assert [i["type"] for i in output] == ["reasoning", "message"]
    assert output[0]["summary"] == [{"type": "summary_text", "text": "hmm"}]
    assert [o["output_index"] for o in objects if o["type"] == "response.output_item.added"] == [0, 1]


def test_tool_calls_in_pieces_are_function_call_items() -> None:
    events = [
        ToolCallDelta(0, "get_weather", "", "call_a"),
        ToolCallDelta(0, "", '{"city":'),
        ToolCallDelta(0, "", '"Paris"}'),
        ToolCallDelta(1, "get_time", '{"city":"Rome"}'),
        Finish("tool_calls"),
    ]
    _, objects, _ = encode(events)
    kinds = [o["type"] for o in objects]
    assert kinds.count("response.function_call_arguments.delta") == 3
    assert kinds.count("response.function_call_arguments.done") == 2
    added = objects[2]["item"]
    assert added["arguments"] == "" and added["call_id"] == "call_a" and added["status"] == "in_progress"
    output = objects[-1]["response"]["output"]
    assert [(i["name"], i["arguments"], i["status"]) for i in output] == [
        ("get_weather", '{"city":"Paris"}', "completed"),
        ("get_time", '{"city":"Rome"}', "completed"),
    ]
    assert output[1]["call_id"].startswith("call_") and output[0]["id"].startswith("fc_")


def test_frames_are_named_sse_events_without_done() -> None:
    enc, objects, _ = encode([TextDelta("x"), Finish("stop")])
    frame = enc.frame(objects[-1])
    assert frame.startswith(b"event: response.completed\ndata: {") and frame.endswith(b"\n\n")
    assert enc.closing_bytes == b""


def test_a_failure_mid_stream_is_an_error_event_then_response_failed() -> None:
    finals: list[dict[str, Any]] = []
    enc = ResponsesEncoder("asked", {}, 0.0, finals.append)
    first = enc.objects(TextDelta("par"))
    raw = enc.error(RunnerError("the engine closed the stream early"))
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert [e["type"] for e in events] == ["error", "response.failed"]
    assert events[0]["message"] == "the engine closed the stream early" and events[0]["code"] == "502"
    failed = events[1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"] == events[0]["message"]
    assert (
        failed["output"][0]["content"][0]["text"] == "par" and failed["output"][0]["status"] == "incomplete"
    )
    assert events[1]["sequence_number"] == first[-1]["sequence_number"] + 2 and finals == [failed]


def test_a_failure_before_any_event_still_opens_the_response() -> None:
    enc = ResponsesEncoder("asked", {}, 0.0)
    raw = enc.error(RunnerError("boom"))
    kinds = [line[7:] for line in raw.split(b"\n") if line.startswith(b"event: ")]
    assert kinds == [b"response.created", b"response.in_progress", b"error", b"response.failed"]


def test_tool_call_message_round_trip_through_the_stored_output() -> None:
    _, objects, _ = encode([ToolCallDelta(0, "get_weather", '{"city":"Oslo"}'), Finish("tool_calls")])
    output = objects[-1]["response"]["output"]
    messages = messages_for(
        output, [{"type": "function_call_output", "call_id": output[0]["call_id"], "output": "cold"}], None
    )
    assert messages[0].tool_calls == [ToolCall("get_weather", {"city": "Oslo"}, output[0]["call_id"])]
    assert messages[1].role == "tool" and messages[1].tool_name == "get_weather"
