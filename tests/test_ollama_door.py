"""Ollama's door, with tables: its requests through the canonical call to the engine's body
(``chat_body``/``generate_body`` below compose door -> prepare -> engine request), and the engine's
chunks through canonical events to Ollama's lines."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from enginehouse.api.ollama import ChatRequest, GenerateRequest, Message, Options
from enginehouse.api.ollama_door import (
    LOAD_OPTIONS,
    SAMPLING_OPTIONS,
    OllamaEncoder,
    canonical_message,
    chat_call,
    collapse,
    generate_call,
    merge_options,
    response_format,
    sampling_fields,
)
from enginehouse.api.prepare import ModelFacts, prepare_chat, prepare_completion
from enginehouse.engines.openai_wire import chat_request, engine_message, events_of, request_for


def message_to_openai(msg: Message) -> dict[str, Any]:
    return engine_message(canonical_message(msg))


def chat_body(
    req: ChatRequest, served: str, defaults: dict[str, Any], system: str | None = None
) -> dict[str, Any]:
    prepared = prepare_chat(chat_call(req), ModelFacts(params=defaults, system=system))
    return chat_request(prepared.call, served)[1]  # type: ignore[arg-type]


def generate_body(
    req: GenerateRequest, served: str, defaults: dict[str, Any], system: str | None = None
) -> tuple[str, dict[str, Any]]:
    prepared = prepare_completion(generate_call(req), ModelFacts(params=defaults, system=system))
    return request_for(prepared.call, served)


# -- sampling options -------------------------------------------------------------------------------

SAMPLE_VALUES: dict[str, Any] = {
    "num_predict": 128,
    "temperature": 0.7,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.05,
    "typical_p": 0.95,
    "repeat_penalty": 1.1,
    "repeat_last_n": 64,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.25,
    "seed": 42,
    "stop": ["<|im_end|>", "\n\n"],
    "num_keep": 5,
}


def test_sample_values_cover_every_sampling_option() -> None:
    assert set(SAMPLE_VALUES) == set(SAMPLING_OPTIONS)


@pytest.mark.parametrize(
    ("option", "field"),
    [
        ("num_predict", "max_tokens"),
        ("temperature", "temperature"),
        ("top_k", "top_k"),
        ("top_p", "top_p"),
        ("min_p", "min_p"),
        ("typical_p", "typical_p"),
        ("repeat_penalty", "repeat_penalty"),
        ("repeat_last_n", "repeat_last_n"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
        ("seed", "seed"),
        ("stop", "stop"),
        ("num_keep", "n_keep"),
    ],
)
def test_sampling_option_maps_to_field(option: str, field: str) -> None:
    assert SAMPLING_OPTIONS[option] == field
    value = SAMPLE_VALUES[option]
    assert sampling_fields({option: value}) == {field: value}


def test_every_sampling_option_at_once() -> None:
    body = sampling_fields(SAMPLE_VALUES)
    assert body == {SAMPLING_OPTIONS[k]: v for k, v in SAMPLE_VALUES.items()}


@pytest.mark.parametrize("value", [-1, -2])
def test_negative_num_predict_is_dropped(value: int) -> None:
    assert sampling_fields({"num_predict": value, "temperature": 0.1}) == {"temperature": 0.1}


def test_num_predict_zero_is_kept() -> None:
    assert sampling_fields({"num_predict": 0}) == {"max_tokens": 0}


@pytest.mark.parametrize("option", sorted(LOAD_OPTIONS))
def test_load_options_are_not_request_fields(option: str) -> None:
    assert sampling_fields({option: 8, "seed": 1}) == {"seed": 1}


@pytest.mark.parametrize("option", ["mirostat", "numa", "use_mmap", "unknown_thing"])
def test_unknown_options_are_dropped(option: str) -> None:
    assert sampling_fields({option: 1}) == {}


def test_merge_options_request_wins_over_model_defaults() -> None:
    defaults = {"temperature": 0, "stop": ["<|im_end|>"]}
    merged = merge_options(defaults, Options(temperature=0.8, top_k=10))
    assert merged == {"temperature": 0.8, "stop": ["<|im_end|>"], "top_k": 10}
    assert defaults == {"temperature": 0, "stop": ["<|im_end|>"]}  # not mutated
    assert merge_options(defaults, None) == defaults


def test_options_single_stop_string_becomes_list() -> None:
    assert sampling_fields(merge_options({}, Options(stop="END"))) == {"stop": ["END"]}


# -- response_format --------------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("json", {"type": "json_object"}),
        (
            SCHEMA,
            {"type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA, "strict": True}},
        ),
        (None, None),
        ("", None),
    ],
)
def test_response_format(fmt: Any, expected: Any) -> None:
    assert response_format(fmt) == expected


# -- messages ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"role": "user", "content": "hi"}, {"role": "user", "content": "hi"}),
        ({"role": "system", "content": "be brief"}, {"role": "system", "content": "be brief"}),
        (
            {"role": "tool", "content": "22C", "tool_name": "get_weather"},
            {"role": "tool", "content": "22C", "name": "get_weather"},
        ),
        ({"role": "tool", "content": "22C"}, {"role": "tool", "content": "22C"}),
        (
            {"role": "assistant", "content": "4", "thinking": "2+2"},
            {"role": "assistant", "content": "4", "reasoning_content": "2+2"},
        ),
        # thinking is only passed back for the assistant
        ({"role": "user", "content": "x", "thinking": "t"}, {"role": "user", "content": "x"}),
    ],
)
def test_message_to_openai(message: dict[str, Any], expected: dict[str, Any]) -> None:
    assert message_to_openai(Message.model_validate(message)) == expected


def test_message_tool_calls_become_openai_function_calls() -> None:
    msg = Message.model_validate(
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}},
                {"function": {"name": "get_time", "arguments": {}}},
            ],
        }
    )
    out = message_to_openai(msg)
    assert out["role"] == "assistant" and out["content"] == ""
    calls = out["tool_calls"]
    assert [c["id"] for c in calls] == ["call_0", "call_1"]
    assert all(c["type"] == "function" for c in calls)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    for c in calls:
        assert isinstance(c["function"]["arguments"], str)  # OpenAI wants a JSON string
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "C"}
    assert json.loads(calls[1]["function"]["arguments"]) == {}


# -- chat_body --------------------------------------------------------------------------------------

USER = {"role": "user", "content": "What is the capital of France?"}


def chat_req(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "smollm2:135m", "messages": [USER], **fields})


def test_chat_body_basics() -> None:
    body = chat_body(chat_req(), "default", {})
    assert body == {
        "model": "default",
        "messages": [USER],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_chat_body_model_system_added_when_request_has_none() -> None:
    body = chat_body(chat_req(), "default", {}, system="You are a helpful assistant.")
    assert body["messages"] == [{"role": "system", "content": "You are a helpful assistant."}, USER]


def test_chat_body_request_system_wins_over_model_system() -> None:
    own = {"role": "system", "content": "Answer in French."}
    body = chat_body(chat_req(messages=[own, USER]), "default", {}, system="You are a helpful assistant.")
    assert body["messages"] == [own, USER]


@pytest.mark.parametrize("system", [None, ""])
def test_chat_body_no_system_without_one(system: str | None) -> None:
    assert chat_body(chat_req(), "default", {}, system=system)["messages"] == [USER]


def test_chat_body_options_and_defaults() -> None:
    defaults = {"temperature": 0, "stop": ["<|im_end|>"], "num_ctx": 2048}
    body = chat_body(
        chat_req(options={"temperature": 0.5, "num_predict": 10, "num_ctx": 4096}), "m", defaults
    )
    assert body["temperature"] == 0.5
    assert body["stop"] == ["<|im_end|>"]
    assert body["max_tokens"] == 10
    assert "num_ctx" not in body and "n_ctx" not in body


def test_chat_body_tools_logprobs_format() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    body = chat_body(chat_req(tools=tools, logprobs=True, top_logprobs=3, format="json"), "m", {})
    assert body["tools"] == tools
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert body["response_format"] == {"type": "json_object"}
    assert "chat_template_kwargs" not in body


def test_chat_body_logprobs_without_top() -> None:
    body = chat_body(chat_req(logprobs=True), "m", {})
    assert body["logprobs"] is True and "top_logprobs" not in body
    assert "logprobs" not in chat_body(chat_req(logprobs=False), "m", {})


@pytest.mark.parametrize(
    ("think", "expected"),
    [
        (True, {"enable_thinking": True}),
        (False, {"enable_thinking": False}),
        ("high", {"enable_thinking": True}),
    ],
)
def test_chat_body_think(think: Any, expected: dict[str, bool]) -> None:
    assert chat_body(chat_req(think=think), "m", {})["chat_template_kwargs"] == expected


# -- generate_body ----------------------------------------------------------------------------------


def gen_req(**fields: Any) -> GenerateRequest:
    return GenerateRequest.model_validate({"model": "smollm2:135m", **fields})


def test_generate_raw_goes_to_completions_untouched() -> None:
    prompt = "<|im_start|>user\n  hi  <|im_end|>\n<|im_start|>assistant\n"
    path, body = generate_body(gen_req(prompt=prompt, raw=True, options={"seed": 3}), "m", {}, system="S")
    assert path == "/v1/completions"
    assert body["prompt"] == prompt
    assert "messages" not in body
    assert body["model"] == "m" and body["stream"] is True and body["seed"] == 3
    assert body["stream_options"] == {"include_usage": True}


def test_generate_chat_with_model_system() -> None:
    path, body = generate_body(gen_req(prompt="hi"), "m", {"temperature": 0}, system="model system")
    assert path == "/v1/chat/completions"
    assert body["messages"] == [
        {"role": "system", "content": "model system"},
        {"role": "user", "content": "hi"},
    ]
    assert body["temperature"] == 0
    assert "prompt" not in body


def test_generate_request_system_wins() -> None:
    _, body = generate_body(gen_req(prompt="hi", system="mine"), "m", {}, system="model system")
    assert body["messages"][0] == {"role": "system", "content": "mine"}
    assert len(body["messages"]) == 2


def test_generate_without_any_system() -> None:
    _, body = generate_body(gen_req(prompt="hi"), "m", {})
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_generate_format_and_think() -> None:
    _, body = generate_body(gen_req(prompt="hi", format=SCHEMA, think=False), "m", {})
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    _, raw = generate_body(gen_req(prompt="hi", format="json", raw=True), "m", {})
    assert raw["json_schema"] == {"type": "object"} and "response_format" not in raw  # what raw enforces


# -- OllamaEncoder ----------------------------------------------------------------------------------

FIRST = {
    "choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}],
    "created": 1760000000,
    "id": "chatcmpl-abc",
    "model": "default",
    "system_fingerprint": "b0-0c1e570",
    "object": "chat.completion.chunk",
}


def content_chunk(text: str) -> dict[str, Any]:
    return {
        "choices": [{"finish_reason": None, "index": 0, "delta": {"content": text}}],
        "object": "chat.completion.chunk",
    }


def finish_chunk(reason: str = "stop") -> dict[str, Any]:
    return {
        "choices": [{"finish_reason": reason, "index": 0, "delta": {}}],
        "object": "chat.completion.chunk",
    }


USAGE = {
    "choices": [],
    "usage": {"completion_tokens": 20, "prompt_tokens": 37, "total_tokens": 57},
    "timings": {"prompt_n": 37, "prompt_ms": 203.518, "predicted_n": 20, "predicted_ms": 202.765},
}


def text_chunk(text: str, reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"text": text, "index": 0, "finish_reason": reason}], "object": "text_completion"}


def run_stream(kind: str, chunks: list[dict[str, Any]], load: float = 0.25) -> list[dict[str, Any]]:
    """Engine chunks -> canonical events -> Ollama lines, as the relay drives the encoder."""
    encoder = OllamaEncoder("smollm2:135m", kind, started=time.monotonic(), load_duration=load)
    lines: list[dict[str, Any]] = []
    for chunk in chunks:
        for event in events_of(chunk):
            encoder.tally.see(event, time.monotonic())
            lines += encoder.objects(event)
    return lines + encoder.closing()


PIECES = ["Par", "is", " is the capital."]
CHAT_CHUNKS = [FIRST, *(content_chunk(p) for p in PIECES), finish_chunk(), USAGE]
RAW_CHUNKS = [*(text_chunk(p) for p in PIECES), text_chunk("", "stop"), USAGE]


def check_final(final: dict[str, Any], load: float = 0.25, reason: str = "stop") -> None:
    assert final["done"] is True
    assert final["done_reason"] == reason
    assert final["model"] == "smollm2:135m"
    assert final["created_at"].endswith("Z")
    assert final["prompt_eval_count"] == 37
    assert final["prompt_eval_duration"] == 203_518_000
    assert final["eval_count"] == 20
    assert final["eval_duration"] == 202_765_000
    assert isinstance(final["total_duration"], int) and final["total_duration"] >= 0
    assert final["load_duration"] == int(load * 1e9)


@pytest.mark.parametrize(
    ("kind", "chunks"),
    [("chat", CHAT_CHUNKS), ("generate", CHAT_CHUNKS), ("generate", RAW_CHUNKS)],
    ids=["chat", "generate-via-chat", "generate-raw"],
)
def test_stream_lines_and_final(kind: str, chunks: list[dict[str, Any]]) -> None:
    lines = run_stream(kind, chunks)
    assert len(lines) == len(PIECES) + 1  # role-only, finish and usage chunks give no line
    for line, piece in zip(lines, PIECES, strict=False):
        assert line["done"] is False
        assert line["model"] == "smollm2:135m"
        if kind == "chat":
            assert line["message"] == {"role": "assistant", "content": piece}
            assert "response" not in line
        else:
            assert line["response"] == piece
            assert "message" not in line
    check_final(lines[-1])
    if kind == "chat":
        assert lines[-1]["message"] == {"role": "assistant", "content": ""}
    else:
        assert lines[-1]["response"] == ""


@pytest.mark.parametrize("kind", ["chat", "generate"])
def test_stream_finish_reason_length(kind: str) -> None:
    lines = run_stream(kind, [FIRST, content_chunk("a"), finish_chunk("length"), USAGE])
    check_final(lines[-1], reason="length")


def test_stream_raw_finish_reason_length() -> None:
    lines = run_stream("generate", [text_chunk("a"), text_chunk("b", "length"), USAGE])
    assert [ln["response"] for ln in lines[:-1]] == ["a", "b"]
    check_final(lines[-1], reason="length")


@pytest.mark.parametrize("reason", ["stop", "tool_calls", None])
def test_stream_other_finish_reasons_are_stop(reason: str | None) -> None:
    chunks = [content_chunk("a")] + ([finish_chunk(reason)] if reason else [])
    assert run_stream("chat", chunks)[-1]["done_reason"] == "stop"


def test_stream_load_duration_in_ns() -> None:
    assert run_stream("chat", CHAT_CHUNKS, load=1.5)[-1]["load_duration"] == 1_500_000_000
    assert run_stream("chat", CHAT_CHUNKS, load=0.0)[-1]["load_duration"] == 0


def test_stream_without_engine_timings_uses_usage_and_clock() -> None:
    usage_only = {"choices": [], "usage": {"completion_tokens": 2, "prompt_tokens": 9, "total_tokens": 11}}
    final = run_stream("chat", [FIRST, content_chunk("a"), content_chunk("b"), finish_chunk(), usage_only])[
        -1
    ]
    assert final["prompt_eval_count"] == 9 and final["eval_count"] == 2
    assert final["prompt_eval_duration"] >= 0 and final["eval_duration"] >= 0
    # nothing at all from the engine: counts from the chunks we saw
    final = run_stream("chat", [content_chunk("a"), content_chunk("b")])[-1]
    assert final["prompt_eval_count"] == 0 and final["eval_count"] == 2


def test_stream_thinking() -> None:
    chunks = [
        FIRST,
        {"choices": [{"index": 0, "finish_reason": None, "delta": {"reasoning_content": "hmm"}}]},
        content_chunk("4"),
        finish_chunk(),
        USAGE,
    ]
    chat = run_stream("chat", chunks)
    assert chat[0]["message"] == {"role": "assistant", "content": "", "thinking": "hmm"}
    gen = run_stream("generate", chunks)
    assert gen[0]["thinking"] == "hmm" and gen[0]["response"] == ""
    assert collapse(chat, "chat")["message"] == {"role": "assistant", "content": "4", "thinking": "hmm"}
    folded = collapse(gen, "generate")
    assert folded["response"] == "4" and folded["thinking"] == "hmm"


def tool_chunk(call: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"finish_reason": None, "index": 0, "delta": {"tool_calls": [call]}}]}


TOOL_CHUNKS = [
    FIRST,
    tool_chunk(
        {
            "index": 0,
            "id": "call_Xy12",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
    ),
    tool_chunk({"index": 0, "function": {"arguments": '{"city": '}}),
    tool_chunk({"index": 0, "function": {"arguments": '"Paris", "unit"'}}),
    tool_chunk({"index": 0, "function": {"arguments": ': "C"}'}}),
    finish_chunk("tool_calls"),
    USAGE,
]


def test_stream_tool_call_fragments_merge_into_one_call() -> None:
    lines = run_stream("chat", TOOL_CHUNKS)
    assert len(lines) == 2  # fragments give no lines; then the whole call, then done
    call_line, final = lines
    assert call_line["done"] is False
    assert call_line["message"]["content"] == ""
    assert call_line["message"]["tool_calls"] == [
        {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}
    ]
    check_final(final)
    folded = collapse(lines, "chat")
    assert folded["done"] is True
    assert folded["message"]["tool_calls"] == call_line["message"]["tool_calls"]
    assert folded["message"]["content"] == ""


def test_stream_two_tool_calls_and_bad_arguments() -> None:
    chunks = [
        tool_chunk({"index": 1, "function": {"name": "b", "arguments": "not json"}}),
        tool_chunk({"index": 0, "function": {"name": "a", "arguments": ""}}),
    ]
    calls = run_stream("chat", chunks)[0]["message"]["tool_calls"]
    assert calls == [
        {"function": {"index": 0, "name": "a", "arguments": {}}},
        {"function": {"index": 1, "name": "b", "arguments": {"_raw": "not json"}}},
    ]


# -- collapse ---------------------------------------------------------------------------------------


def test_collapse_chat() -> None:
    lines = run_stream("chat", CHAT_CHUNKS)
    folded = collapse(lines, "chat")
    assert folded["message"] == {"role": "assistant", "content": "Paris is the capital."}
    assert folded["done"] is True and folded["done_reason"] == "stop"
    assert folded["eval_count"] == 20 and folded["prompt_eval_count"] == 37
    assert lines[-1]["message"]["content"] == ""  # the input lines are not modified


@pytest.mark.parametrize("chunks", [CHAT_CHUNKS, RAW_CHUNKS], ids=["via-chat", "raw"])
def test_collapse_generate(chunks: list[dict[str, Any]]) -> None:
    folded = collapse(run_stream("generate", chunks), "generate")
    assert folded["response"] == "Paris is the capital."
    assert "thinking" not in folded
    assert folded["done"] is True and folded["eval_duration"] == 202_765_000


def test_collapse_only_final_line() -> None:
    folded = collapse(run_stream("chat", [finish_chunk(), USAGE]), "chat")
    assert folded["message"] == {"role": "assistant", "content": ""}
    assert folded["done"] is True
