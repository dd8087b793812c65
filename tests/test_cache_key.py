"""The cache key: every output-changing field changes it, nothing else does."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enginehouse.cache import cache_key, canonical_body, digest_of, is_deterministic, scope_for

MODEL = "smollm2:135m"
DIGEST = "sha256:" + "a" * 64
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
USER = [{"role": "user", "content": "Hi"}]

BASE: dict[tuple[str, str], dict[str, Any]] = {
    ("ollama", "/api/chat"): {"model": MODEL, "messages": USER, "options": {"temperature": 0}},
    ("ollama", "/api/generate"): {"model": MODEL, "prompt": "Hi", "options": {"temperature": 0}},
    ("ollama", "/api/embed"): {"model": MODEL, "input": "Hi"},
    ("ollama", "/api/embeddings"): {"model": MODEL, "prompt": "Hi"},
    ("openai", "/v1/chat/completions"): {"model": MODEL, "messages": USER, "temperature": 0},
    ("openai", "/v1/completions"): {"model": MODEL, "prompt": "Hi", "temperature": 0},
    ("openai", "/v1/embeddings"): {"model": MODEL, "input": "Hi"},
}

OLLAMA_OPTIONS: dict[str, Any] = {
    "temperature": 0.7,
    "top_k": 5,
    "top_p": 0.5,
    "min_p": 0.1,
    "typical_p": 0.9,
    "seed": 42,
    "num_predict": 12,
    "num_ctx": 2048,
    "stop": ["\n"],
    "repeat_penalty": 1.3,
    "repeat_last_n": 32,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "num_keep": 4,
    "num_gpu": 0,
    "num_thread": 1,
    "mirostat": 2,  # a field the gateway does not know: kept, it may matter to the engine
}
OLLAMA_GENERATION: dict[str, Any] = {
    "format": "json",
    "think": True,
    "logprobs": True,
    "top_logprobs": 3,
    "stream": False,
}
OLLAMA_CHAT: dict[str, Any] = {
    "tools": [TOOL],
    "messages": [{"role": "user", "content": "Hello"}],
}
OLLAMA_GENERATE: dict[str, Any] = {
    "system": "Be brief.",
    "template": "{{ .Prompt }}",
    "raw": True,
    "images": ["aGVsbG8="],
    "suffix": "end",
    "context": [1, 2, 3],
    "prompt": "Hello",
}
OPENAI_SAMPLING: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 0.5,
    "max_tokens": 12,
    "max_completion_tokens": 12,
    "stop": ["\n"],
    "seed": 42,
    "logprobs": True,
    "top_logprobs": 2,
    "n": 2,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "logit_bias": {"15339": -100},
    "stream": True,
    "options": {"num_ctx": 2048},
}
OPENAI_CHAT: dict[str, Any] = {
    "response_format": {"type": "json_object"},
    "tools": [TOOL],
    "tool_choice": "required",
    "parallel_tool_calls": False,
}
OPENAI_COMPLETION: dict[str, Any] = {"prompt": "Hello", "suffix": "end", "echo": True}


def _variants() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(door, endpoint, what changed, body): the base bodies, then one change at a time."""
    out = []
    for (door, endpoint), base in BASE.items():
        out.append((door, endpoint, "base", base))

        def vary(name: str, body: dict[str, Any], door: str = door, endpoint: str = endpoint) -> None:
            out.append((door, endpoint, name, body))

        if door == "ollama" and endpoint in ("/api/chat", "/api/generate"):
            for name, value in OLLAMA_OPTIONS.items():
                vary(f"options.{name}", {**base, "options": {**base["options"], name: value}})
            for name, value in {**OLLAMA_GENERATION, "format": {"type": "object"}}.items():
                vary(f"{name}={value}", {**base, name: value})
            vary("format=json", {**base, "format": "json"})
            extra = OLLAMA_CHAT if endpoint == "/api/chat" else OLLAMA_GENERATE
            for name, value in extra.items():
                vary(name, {**base, name: value})
        if endpoint == "/api/chat":
            messages = base["messages"]
            vary("message content", {**base, "messages": [{**messages[0], "content": "Ho"}]})
            vary("message role", {**base, "messages": [{**messages[0], "role": "system"}]})
            vary("message images", {**base, "messages": [{**messages[0], "images": ["aGVsbG8="]}]})
            vary("one more message", {**base, "messages": [*messages, {"role": "assistant", "content": ""}]})
            vary("tool message", {**base, "messages": [*messages, {"role": "tool", "content": "1"}]})
        if door == "openai" and endpoint != "/v1/embeddings":
            for name, value in OPENAI_SAMPLING.items():
                vary(f"{name}={value}", {**base, name: value})
            extra = OPENAI_CHAT if endpoint == "/v1/chat/completions" else OPENAI_COMPLETION
            for name, value in extra.items():
                vary(name, {**base, name: value})
            vary("json_schema", {**base, "response_format": {"type": "json_schema", "json_schema": {}}})
            vary("tool_choice none", {**base, "tool_choice": "none"})
            streamed = {**base, "stream": True}
            vary("stream+usage", {**streamed, "stream_options": {"include_usage": True}})
        if endpoint == "/v1/chat/completions":
            messages = base["messages"]
            vary("message content", {**base, "messages": [{**messages[0], "content": "Ho"}]})
            vary("message role", {**base, "messages": [{**messages[0], "role": "developer"}]})
            parts = [{"type": "text", "text": "Hi"}]
            vary("message parts", {**base, "messages": [{**messages[0], "content": parts}]})
        if endpoint in ("/api/embed", "/v1/embeddings"):
            vary("input", {**base, "input": ["Hi", "there"]})
            vary("dimensions", {**base, "dimensions": 8})
            vary("options.num_ctx", {**base, "options": {"num_ctx": 128}})
        if endpoint == "/api/embed":
            vary("truncate", {**base, "truncate": False})
        if endpoint == "/v1/embeddings":
            vary("encoding_format", {**base, "encoding_format": "base64"})
        vary("model name", {**base, "model": "tiny"})
    return out


def key_of(door: str, endpoint: str, body: dict[str, Any], **routing: Any) -> str | None:
    routing.setdefault("model_digest", DIGEST)
    return cache_key(door, endpoint, body, **routing)  # type: ignore[arg-type]


def test_no_false_hits_across_every_output_changing_field() -> None:
    keys: dict[str, str] = {}
    variants = _variants()
    assert len(variants) > 120
    for door, endpoint, name, body in variants:
        key = key_of(door, endpoint, body)
        assert key is not None
        clash = keys.get(key)
        assert clash is None, f"{door} {endpoint} {name!r} has the key of {clash!r}"
        keys[key] = f"{door} {endpoint} {name}"


ROUTING: list[tuple[str, dict[str, Any]]] = [
    ("model digest", {"model_digest": "sha256:" + "b" * 64}),
    ("template digest", {"template_digest": digest_of("{{ .Prompt }}")}),
    ("another template", {"template_digest": digest_of("{{ .System }}{{ .Prompt }}")}),
    ("instance num_ctx", {"instance": {"num_ctx": 8192}}),
    ("instance engine", {"instance": {"engine": "vllm"}}),
    ("instance flags", {"instance": {"flags": ["--cache-type-k", "q8_0"]}}),
    ("instance replica url", {"instance": {"upstream": "http://box2:8000"}}),
    ("api-key scope", {"scope": scope_for("key-a")}),
    ("another api-key scope", {"scope": scope_for("key-b")}),
]


@pytest.mark.parametrize(("door", "endpoint"), list(BASE))
def test_routing_changes_the_key(door: str, endpoint: str) -> None:
    body = BASE[(door, endpoint)]
    keys = {key_of(door, endpoint, body)}
    for _, routing in ROUTING:
        keys.add(key_of(door, endpoint, body, **routing))
    assert len(keys) == len(ROUTING) + 1


def test_door_and_endpoint_are_in_the_key() -> None:
    body = {"model": MODEL, "prompt": "Hi", "input": "Hi", "options": {"temperature": 0}}
    keys = {key_of(door, endpoint, body) for door, endpoint in BASE}
    assert len(keys) == len(BASE)


def _reordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


@pytest.mark.parametrize(("door", "endpoint", "name", "body"), _variants()[::7])
def test_key_ignores_key_order_and_whitespace(door: str, endpoint: str, name: str, body: dict) -> None:
    compact = orjson.loads(orjson.dumps(body))
    spaced = json.loads(json.dumps(_reordered(body), indent=4, separators=(" ,  ", " :\t")))
    assert key_of(door, endpoint, compact) == key_of(door, endpoint, spaced)


@pytest.mark.parametrize(
    ("door", "endpoint", "body", "same"),
    [
        ("ollama", "/api/chat", {"stream": True}, "Ollama streams by default"),
        ("openai", "/v1/chat/completions", {"stream": False}, "OpenAI does not"),
        ("openai", "/v1/chat/completions", {"stream_options": {"include_usage": True}}, "no stream: moot"),
        ("ollama", "/api/chat", {"keep_alive": "1h"}, "keep_alive changes no byte"),
        ("openai", "/v1/chat/completions", {"user": "u-1", "metadata": {"a": 1}}, "bookkeeping"),
        ("openai", "/v1/chat/completions", {"seed": None}, "null is absent"),
        ("openai", "/v1/chat/completions", {"temperature": 0.0}, "0.0 is 0"),
        ("ollama", "/api/chat", {"options": {"temperature": 0.0, "seed": None}}, "in options too"),
    ],
)
def test_equivalent_requests_share_a_key(door: str, endpoint: str, body: dict, same: str) -> None:
    base = BASE[(door, endpoint)]
    assert key_of(door, endpoint, {**base, **body}) == key_of(door, endpoint, base), same


def test_stream_flag_changes_the_key_because_it_changes_the_framing() -> None:
    base = BASE[("ollama", "/api/chat")]
    assert key_of("ollama", "/api/chat", {**base, "stream": False}) != key_of("ollama", "/api/chat", base)
    assert canonical_body("ollama", "/api/chat", base)["stream"] is True
    assert canonical_body("openai", "/v1/chat/completions", {"model": MODEL})["stream"] is False


def test_an_unencodable_body_is_never_cached() -> None:
    assert key_of("openai", "/v1/completions", {"model": MODEL, "prompt": "x", "n": 2**70}) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6))
def test_key_is_stable_under_reordering_any_body(body: dict[str, Any]) -> None:
    shuffled = _reordered(copy.deepcopy(body))
    assert key_of("openai", "/v1/chat/completions", body) == key_of(
        "openai", "/v1/chat/completions", shuffled
    )


def test_scope_hides_the_key_and_empty_is_unscoped() -> None:
    assert scope_for(None) == scope_for("") == ""
    assert "secret" not in scope_for("secret")
    assert scope_for("a") != scope_for("b")


@pytest.mark.parametrize(
    ("door", "endpoint", "body", "params", "expected"),
    [
        ("ollama", "/api/chat", {"options": {"temperature": 0}}, {}, True),
        ("ollama", "/api/chat", {"options": {"seed": 7}}, {}, True),
        ("ollama", "/api/chat", {"options": {"seed": 0, "temperature": 0.9}}, {}, True),
        ("ollama", "/api/chat", {"options": {"seed": -1}}, {}, False),
        ("ollama", "/api/chat", {}, {}, False),
        ("ollama", "/api/chat", {"options": {"temperature": 0.8}}, {}, False),
        ("ollama", "/api/chat", {}, {"temperature": 0}, True),  # the Modelfile's default
        ("ollama", "/api/chat", {"options": {"temperature": 0.8}}, {"temperature": 0}, False),
        ("ollama", "/api/generate", {"options": {"seed": 3}}, {}, True),
        ("ollama", "/api/chat", {"temperature": 0}, {}, False),  # not an Ollama field
        ("openai", "/v1/chat/completions", {"temperature": 0}, {}, True),
        ("openai", "/v1/chat/completions", {"seed": 1}, {}, True),
        ("openai", "/v1/chat/completions", {"temperature": 1}, {}, False),
        ("openai", "/v1/chat/completions", {}, {}, False),
        ("openai", "/v1/chat/completions", {"options": {"temperature": 0}}, {}, True),
        ("openai", "/v1/completions", {}, {"seed": 5}, True),
        ("openai", "/v1/chat/completions", {"temperature": True}, {}, False),
        ("ollama", "/api/embed", {}, {}, True),
        ("ollama", "/api/embeddings", {}, {}, True),
        ("openai", "/v1/embeddings", {}, {}, True),
    ],
)
def test_deterministic(door: str, endpoint: str, body: dict, params: dict, expected: bool) -> None:
    assert is_deterministic(door, endpoint, {"model": MODEL, **body}, params) is expected  # type: ignore[arg-type]
