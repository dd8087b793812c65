"""Thinking controls: each door's knob as the canonical ``think``, the engine fields it becomes, the
``<think>`` split of Go-template answers, and the reasoning in each door's wire shape."""

from __future__ import annotations

import time
from typing import Any

import pytest

from enginehouse.api.ollama_door import OllamaEncoder
from enginehouse.api.openai_door import OpenAIChatEncoder, chat_call
from enginehouse.api.prepare import ModelFacts, prepare_chat, prepare_completion
from enginehouse.api.thinking import (
    ThinkingSplitter,
    ThinkingStep,
    ThinkTags,
    think_from_openai,
    think_tags,
)
from enginehouse.canonical import ChatCall, CompletionCall, Event, Finish, Message, ReasoningDelta, TextDelta
from enginehouse.engines.openai_wire import chat_request
from enginehouse.server.openai_routes import normalise_request
from tests.templates import CHATML_THINK, CHATML_TOOLS

TAGS = ThinkTags("<think>", "</think>")


@pytest.mark.parametrize(
    ("body", "think"),
    [
        ({}, None),
        ({"reasoning_effort": "none"}, False),
        ({"reasoning_effort": "minimal"}, "low"),
        ({"reasoning_effort": "low"}, "low"),
        ({"reasoning_effort": "medium"}, "medium"),
        ({"reasoning_effort": "high"}, "high"),
        ({"reasoning_effort": "xhigh"}, "high"),
        ({"reasoning": {"effort": "medium"}}, "medium"),
        ({"reasoning_effort": "low", "reasoning": {"effort": "high"}}, "low"),
    ],
)
def test_openai_effort_is_the_canonical_think(body: dict[str, Any], think: Any) -> None:
    assert think_from_openai(body) == think
    assert chat_call({"model": "m", "messages": [], **body}).think == think


@pytest.mark.parametrize(
    ("think", "fields"),
    [
        (None, {}),
        (True, {"chat_template_kwargs": {"enable_thinking": True}}),
        (False, {"chat_template_kwargs": {"enable_thinking": False}}),
        ("low", {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "low"}),
        ("high", {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"}),
    ],
)
def test_think_as_engine_fields(think: Any, fields: dict[str, Any]) -> None:
    _, body = chat_request(ChatCall(model="m", messages=[Message("user", "hi")], think=think), "served")
    for name in ("chat_template_kwargs", "reasoning_effort"):
        assert body.get(name) == fields.get(name)


def test_openai_reasoning_object_becomes_reasoning_effort_for_the_engine() -> None:
    data = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning": {"effort": "low"}}
    normalise_request(data, "/v1/chat/completions")
    assert data["reasoning_effort"] == "low" and "reasoning" not in data
    plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high"}
    normalise_request(plain, "/v1/chat/completions")
    assert plain == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": "high",
    }


@pytest.mark.parametrize(
    ("template", "tags"),
    [
        (CHATML_THINK, TAGS),
        ("{{ .Prompt }}<thinking>{{ .Thinking }}</thinking>", ThinkTags("<thinking>", "</thinking>")),
        (CHATML_TOOLS, None),
        ("{{ .Prompt }} <think>", None),  # never closed: not a section
    ],
)
def test_think_tags_from_the_template(template: str, tags: ThinkTags | None) -> None:
    assert think_tags(template) == tags


@pytest.mark.parametrize(
    ("pieces", "inside", "reasoning", "content"),
    [
        (["<think>a b</think>answer"], False, "a b", "answer"),
        (["<thi", "nk>a", " b</th", "ink>", "\n\nanswer"], False, "a b", "answer"),
        (["  <think>\nx</think> y"], False, "x", "y"),
        (
            ["plain ", "text <think>not a section</think>"],
            False,
            "",
            "plain text <think>not a section</think>",
        ),
        (["a b</think>answer"], True, "a b", "answer"),
        (["a b", "</", "think", ">c"], True, "a b", "c"),
        (["all reasoning, never closed <"], True, "all reasoning, never closed <", ""),
        (["<"], False, "", "<"),
    ],
)
def test_splitter_table(pieces: list[str], inside: bool, reasoning: str, content: str) -> None:
    splitter = ThinkingSplitter(TAGS, inside)
    got_r = got_c = ""
    for piece in pieces:
        r, c = splitter.feed(piece)
        got_r, got_c = got_r + r, got_c + c
    r, c = splitter.finish()
    assert (got_r + r, got_c + c) == (reasoning, content)


def test_split_streams_reasoning_as_it_arrives() -> None:
    source: list[Event] = [TextDelta(t) for t in ["<think>", "one ", "two", "</think>", "three"]]
    step = ThinkingStep(TAGS, False)
    events = [out for event in [*source, Finish("stop")] for out in step.feed(event)] + step.end()
    assert events == [
        ReasoningDelta("one "),
        ReasoningDelta("two"),
        TextDelta("three"),
        Finish("stop"),
    ]


FACTS = ModelFacts(params={}, template=CHATML_THINK)


@pytest.mark.parametrize(
    ("think", "tail", "split", "inside"),
    [
        (True, "<think>\n", True, True),
        ("high", "<think>\n", True, True),
        (False, "<think>\n\n</think>\n\n", False, False),
        (None, "<|im_start|>assistant\n", True, False),
    ],
)
def test_go_template_chat_renders_think_and_splits(think: Any, tail: str, split: bool, inside: bool) -> None:
    call = ChatCall(model="m", messages=[Message("user", "hi")], think=think)
    prepared = prepare_chat(call, FACTS)
    assert isinstance(prepared.call, CompletionCall)
    assert prepared.call.prompt.endswith(tail)
    assert (prepared.thinking is not None, prepared.thinking_open) == (split, inside)


def test_go_template_generate_renders_think() -> None:
    call = CompletionCall(model="m", prompt="hi", raw=False, think=True)
    prepared = prepare_completion(call, FACTS)
    assert prepared.thinking == TAGS and prepared.thinking_open
    off = prepare_completion(CompletionCall(model="m", prompt="hi", raw=False, think=False), FACTS)
    assert off.thinking is None and off.call.prompt.endswith("</think>\n\n")


def test_earlier_thinking_goes_back_to_the_template() -> None:
    messages = [Message("user", "hi"), Message("assistant", "hello", thinking="greet"), Message("user", "x")]
    prepared = prepare_chat(ChatCall(model="m", messages=messages), FACTS)
    assert "<think>greet</think>\nhello" in prepared.call.prompt  # type: ignore[union-attr]


EVENTS: list[Event] = [ReasoningDelta("r1"), ReasoningDelta("r2"), TextDelta("c1"), Finish("stop")]


def test_openai_encoder_streams_reasoning_content() -> None:
    enc = OpenAIChatEncoder("m", False, time.monotonic())
    chunks = [c for e in EVENTS for c in enc.objects(e)]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [
        {"role": "assistant", "reasoning_content": "r1"},
        {"reasoning_content": "r2"},
        {"content": "c1"},
    ]
    enc.closing()
    message = enc.fold(chunks)["choices"][0]["message"]
    assert message["reasoning_content"] == "r1r2" and message["content"] == "c1"


@pytest.mark.parametrize("kind", ["chat", "generate"])
def test_ollama_encoder_puts_reasoning_in_thinking(kind: str) -> None:
    enc = OllamaEncoder("m", kind, started=time.monotonic(), load_duration=0)
    lines = [line for e in EVENTS for line in enc.objects(e)] + enc.closing()
    final = enc.fold(lines)
    if kind == "chat":
        assert final["message"]["thinking"] == "r1r2" and final["message"]["content"] == "c1"
    else:
        assert final["thinking"] == "r1r2" and final["response"] == "c1"
