"""Tool calls for Go-template models: the format learned from the template, parsing, streaming splits,
forcing schemas, and the OpenAI chat chunks built from a raw completion stream."""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import pytest

from enginehouse.api.ollama_door import OllamaEncoder
from enginehouse.api.openai_door import OpenAIChatEncoder, chat_call
from enginehouse.api.prepare import ModelFacts, gateway_template, prepare_chat, template_messages
from enginehouse.api.toolcalls import (
    ToolCallSplitter,
    ToolCallStep,
    ToolFormat,
    forcing_schema,
    parse_calls,
    tool_format,
)
from enginehouse.canonical import Event
from enginehouse.engines.openai_wire import completion_request, events_of
from enginehouse.errors import InvalidRequest
from enginehouse.store.bundled import BUNDLED_TEMPLATE
from tests.templates import CHATML_TOOLS, LLAMA31_TOOLS, MISTRAL_TOOLS

CHATML = ToolFormat("<tool_call>\n", "\n</tool_call>", "arguments")
LLAMA = ToolFormat("", "", "parameters")
MISTRAL = ToolFormat("[TOOL_CALLS] ", "", "arguments")


def ollama_messages(messages: list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    """OpenAI messages as a Go template sees them: the OpenAI door's call, then the template's view."""
    return template_messages(chat_call({"model": "m", "messages": messages}).messages, system)


def completion_body(
    data: dict[str, Any], served: str, template: str, system: str | None, default_choice: str = "auto"
) -> tuple[dict[str, Any], ToolFormat | None, bool]:
    """A chat for a Go-template model as the raw completion its engine gets (door -> prepare -> body)."""
    facts = ModelFacts({}, system, template, engine_tools=False, tool_choice=default_choice)
    prepared = prepare_chat(chat_call({"model": "m", **data}), facts)
    return completion_request(prepared.call, served)[1], prepared.tools, prepared.forced  # type: ignore[arg-type]


def encode(encoder: Any, chunks: list[dict[str, Any]], fmt: ToolFormat | None, forced: bool = False) -> list:
    """Engine chunks -> events (tool calls split out of the text in ``fmt``) -> the encoder's objects."""

    events: list[Event] = [event for chunk in chunks for event in events_of(chunk)]
    if fmt:
        step = ToolCallStep(fmt, forced)
        events = [out for event in events for out in step.feed(event)] + step.end()
    out: list = []
    for event in events:
        encoder.tally.see(event, time.monotonic())
        out += encoder.objects(event)
    return out + encoder.closing()


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


@pytest.mark.parametrize(
    ("template", "fmt"),
    [(CHATML_TOOLS, CHATML), (LLAMA31_TOOLS, LLAMA), (MISTRAL_TOOLS, MISTRAL), ("{{ .Prompt }}", None)],
)
def test_format_is_learned_from_the_template(template: str, fmt: ToolFormat | None) -> None:
    assert tool_format(template) == fmt


CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


@pytest.mark.parametrize(
    ("fmt", "text", "content", "calls"),
    [
        (
            CHATML,
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            "",
            [CALL],
        ),
        (
            CHATML,
            'Let me check.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}',
            "Let me check.",
            [CALL],
        ),
        (
            CHATML,
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
            "",
            [CALL, {"name": "get_time", "arguments": {}}],
        ),
        (CHATML, "Paris is sunny.", "Paris is sunny.", []),
        (CHATML, "<tool_call> not json", "<tool_call> not json", []),  # talk about a call is no call
        (LLAMA, ' {"name": "get_weather", "parameters": {"city": "Paris"}}', "", [CALL]),
        (LLAMA, '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', "", [CALL]),
        (LLAMA, '{"answer": 42}', '{"answer": 42}', []),  # JSON, but not a call
        (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', "", [CALL]),
    ],
)
def test_parse_calls(fmt: ToolFormat, text: str, content: str, calls: list) -> None:
    assert parse_calls(text, fmt) == (content, calls)


def test_splitter_streams_content_and_holds_a_prefix_split_across_chunks() -> None:
    splitter = ToolCallSplitter(CHATML)
    chunks = [
        "Sure",
        ", <tool",
        '_call>\n{"name": "get_weather",',
        ' "arguments": {"city": "Paris"}}',
        "\n</tool_call>",
    ]
    sent = [splitter.feed(c) for c in chunks]
    assert sent == ["Sure", ", ", "", "", ""]
    assert splitter.finish() == ("", [CALL])
    plain = ToolCallSplitter(CHATML)
    assert [plain.feed(c) for c in ["It is <", "b>sunny</b>"]] == ["It is ", "<b>sunny</b>"]
    assert plain.finish() == ("", [])
    bare = ToolCallSplitter(LLAMA)
    assert [bare.feed(c) for c in ["\n", '{"name": "get_weather", ', '"parameters": {"city": "Paris"}}']] == [
        "",
        "",
        "",
    ]
    assert bare.finish() == ("", [CALL])
    forced = ToolCallSplitter(CHATML, forced=True)  # the prefix went into the prompt
    forced.feed('{"name": "get_weather", "arguments": {"city": "Paris"}}')
    assert forced.finish() == ("", [CALL])


def test_forcing_schema_admits_exactly_the_calls_of_the_tools() -> None:
    schema = forcing_schema([WEATHER, TIME], CHATML)
    jsonschema.validate(CALL, schema)
    jsonschema.validate({"name": "get_time", "arguments": {}}, schema)
    for bad in (
        {"name": "other", "arguments": {}},
        {"name": "get_weather", "arguments": {}},
        {"name": "get_time"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    named = forcing_schema([WEATHER, TIME], LLAMA, "get_time")
    jsonschema.validate({"name": "get_time", "parameters": {}}, named)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_weather", "parameters": {"city": "x"}}, named)


def test_openai_messages_become_ollama_messages() -> None:
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    out = ollama_messages(messages, "ignored: the client sent a system message")
    assert out[0] == {"role": "system", "content": "Be brief."}
    assert out[2]["tool_calls"] == [
        {"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert out[3] == {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "c1"}
    with pytest.raises(InvalidRequest, match="not JSON"):
        ollama_messages(
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}], None
        )


def test_completion_body_renders_the_template_and_forces_a_call() -> None:
    data = {
        "model": "m",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_tokens": 50,
        "temperature": 0,
    }
    body, fmt, forced = completion_body(data, "served", CHATML_TOOLS, "You are helpful.")
    assert fmt == CHATML and forced
    assert body["prompt"].startswith("<|im_start|>system\nYou are helpful.\n\n# Tools")
    assert '"name":"get_weather"' in body["prompt"].replace(" ", "")
    assert body["prompt"].endswith("<|im_start|>assistant\n<tool_call>\n")
    assert body["json_schema"]["properties"]["name"] == {"const": "get_weather"}
    assert (body["max_tokens"], body["temperature"], body["model"]) == (50, 0, "served")
    plain, fmt, forced = completion_body({**data, "tool_choice": "none"}, "served", CHATML_TOOLS, None)
    assert fmt is None and not forced and "# Tools" not in plain["prompt"]
    for bad, message in (
        ({**data, "n": 2}, "n > 1"),
        ({**data, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
        ({**data, "tool_choice": "always"}, "tool_choice must be"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            completion_body(bad, "served", CHATML_TOOLS, None)
    with pytest.raises(InvalidRequest, match="does not support tools"):
        completion_body(data, "served", "{{ .Prompt }}", None)


def raw_chunks(*texts: str, finish: str = "stop") -> list[dict]:
    """Chunks as llama-server's /v1/completions streams them."""
    chunks = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in texts]
    chunks.append({"choices": [{"index": 0, "text": "", "finish_reason": finish}]})
    chunks.append(
        {
            "choices": [],
            "usage": {"prompt_tokens": 20, "completion_tokens": len(texts), "total_tokens": 20 + len(texts)},
        }
    )
    return chunks


def test_chat_chunks_carry_content_then_tool_calls_then_usage() -> None:
    chunks = OpenAIChatEncoder("m", include_usage=True, started=0.0)
    raw = raw_chunks("One moment.", "<tool_call>", '{"name": "get_weather", "arguments": {"city": "Paris"}}')
    out = encode(chunks, raw, CHATML)
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": "One moment."}
    call = out[1]["choices"][0]["delta"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {
        "city": "Paris"
    }
    assert out[2]["choices"][0]["finish_reason"] == "tool_calls"
    assert out[3]["choices"] == [] and out[3]["usage"]["completion_tokens"] == 3
    whole = chunks.fold(out)
    assert whole["choices"][0]["message"]["content"] == "One moment."
    assert whole["choices"][0]["message"]["tool_calls"][0]["type"] == "function"


def test_chat_chunks_plain_answer_and_length() -> None:
    chunks = OpenAIChatEncoder("m", include_usage=False, started=0.0)
    out = encode(chunks, raw_chunks("Par", "is", finish="length"), None)
    assert out[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks.fold(out)["choices"][0]["message"] == {"role": "assistant", "content": "Paris"}


def test_ollama_stream_splits_calls_out_of_raw_text() -> None:
    stream = OllamaEncoder("m", "chat", started=0.0, load_duration=0.0)
    raw = raw_chunks("<tool_call>\n", '{"name": "get_weather", "arguments": {"city": "Paris"}}')
    lines = encode(stream, raw, CHATML)
    assert len(lines) == 2  # no content line: the call, then done
    assert lines[0]["message"]["content"] == ""
    assert lines[0]["message"]["tool_calls"] == [{"function": {"index": 0, **CALL}}]
    assert lines[-1]["done"] is True


PLAIN_GO = "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
JINJA = "{% for m in messages %}{{ m.content }}{% endfor %}"


@pytest.mark.parametrize(
    ("template", "tools", "engine_tools", "renders"),
    [
        (CHATML_TOOLS, True, True, True),  # the template writes calls: the gateway renders
        (PLAIN_GO, False, True, True),  # no tools asked: the model's own template, as always
        (PLAIN_GO, True, True, False),  # no tool section: llama-server's generic tool format
        (PLAIN_GO, True, False, True),  # no engine that takes tools: rendered, and refused there
        (JINJA, True, True, False),  # a GGUF (Jinja) template is llama-server's own business
        (None, True, True, False),
    ],
)
def test_gateway_template_leaves_tools_to_an_engine_that_can(
    template: str | None, tools: bool, engine_tools: bool, renders: bool
) -> None:
    assert (gateway_template(template, tools, engine_tools) is not None) is renders


def test_the_bundled_template_writes_and_reads_smollm2_calls() -> None:
    fmt = tool_format(BUNDLED_TEMPLATE)
    assert fmt is not None and (fmt.marker, fmt.suffix.strip()) == ("<tool_call>", "</tool_call>")
    out = '<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n]</tool_call>'
    assert parse_calls(out, fmt) == ("", [{"name": "get_weather", "arguments": {"city": "Paris"}}])
    body, _, _ = completion_body(
        {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER]},
        "served",
        BUNDLED_TEMPLATE,
        "You are a helpful assistant.",
    )
    prompt = body["prompt"]
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.\n")  # SYSTEM kept
    assert '"name":"get_weather"' in prompt and prompt.endswith("<|im_start|>assistant\n")
    plain, _, _ = completion_body(
        {"messages": [{"role": "user", "content": "Hi"}]}, "s", BUNDLED_TEMPLATE, None
    )
    assert plain["prompt"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
