"""Validation at the door: each bound and type case, on both doors, with the field each error names."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from enginehouse.api import limits
from enginehouse.api.gbnf import GrammarError, check_grammar
from enginehouse.api.invalid import field_of, invalid_request
from enginehouse.api.ollama import ChatRequest, EmbedRequest, GenerateRequest, Options
from enginehouse.api.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from enginehouse.api.structured import check_json_schema, check_pattern
from enginehouse.config_values import parse_keep_alive
from enginehouse.errors import InvalidRequest, ollama_error_body, openai_error_body

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def refusal(model: type[BaseModel], body: dict[str, Any]) -> InvalidRequest:
    """What the door answers for ``body``: the error the middleware turns into a 400."""
    try:
        model.model_validate(body)
    except ValidationError as exc:
        return invalid_request(exc)
    except InvalidRequest as exc:
        return exc
    raise AssertionError(f"accepted: {body}")


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}


def tool(parameters: Any) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


BIG = 10**20

OPENAI_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [CHAT["messages"][0]] * (limits.MAX_MESSAGES + 1)}, "messages"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": limits.MAX_TOKENS + 1}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"n_predict": BIG}, "n_predict"),
    ({"n": limits.MAX_CHOICES + 1}, "n"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"n_probs": 10**9}, "n_probs"),
    ({"logit_bias": [[15043, 1.0]]}, "logit_bias"),
    ({"logit_bias": {"15043": 101}}, "logit_bias.15043"),
    ({"logit_bias": {str(i): 1 for i in range(limits.MAX_LOGIT_BIAS + 1)}}, "logit_bias"),
    ({"stop": ["x"] * (limits.MAX_STOP + 1)}, "stop"),
    ({"stop": "x" * (limits.MAX_STOP_CHARS + 1)}, "stop"),
    ({"seed": 2**64}, "seed"),
    ({"temperature": 3}, "temperature"),
    ({"top_k": 2**40}, "top_k"),
    ({"id_slot": -2}, "id_slot"),
    ({"samplers": ["top_k"] * (limits.MAX_SAMPLERS + 1)}, "samplers"),
    ({"lora": [{"id": 0, "scale": "big"}]}, "lora[0].scale"),
    ({"t_max_predict_ms": -1}, "t_max_predict_ms"),
    ({"options": {"num_ctx": BIG}}, "options.num_ctx"),
    ({"options": {"num_thread": 10**6}}, "options.num_thread"),
    ({"options": {"num_gpu": 10**6}}, "options.num_gpu"),
    ({"options": {"repeat_last_n": -2}}, "options.repeat_last_n"),
    ({"options": {"num_batch": 0}}, "options"),
    ({"grammar": "root ::= ("}, "grammar"),
    ({"grammar": 'rot ::= "a"'}, "grammar"),
    ({"json_schema": {"type": "strin"}}, "json_schema.type"),
    ({"json_schema": {"enum": list(range(100_000))}}, "json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    (
        {"response_format": schema_format({"enum": list(range(100_000))})},
        "response_format.json_schema.schema",
    ),
    (
        {"response_format": schema_format({"type": "string", "pattern": "(("})},
        "response_format.json_schema.schema.pattern",
    ),
    ({"response_format": {"type": "json_object", "schema": []}}, "response_format.schema"),
    (
        {"tools": tool({"type": "object", "properties": {"a": {"enum": list(range(1000))}}})},
        "tools[0].function.parameters",
    ),
    ({"tools": tool("not a schema")}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools[0].function.name"),
    ({"tools": tool({})[:1] * (limits.MAX_TOOLS + 1)}, "tools"),
]


@pytest.mark.parametrize(("patch", "param"), OPENAI_REFUSED, ids=[p for _, p in OPENAI_REFUSED])
def test_the_openai_door_refuses_with_invalid_request_error_and_the_field_as_param(
    patch: dict[str, Any], param: str
):
    exc = refusal(ChatCompletionRequest, {**CHAT, **patch})
    body = openai_error_body(exc)["error"]
    assert exc.status == 400
    assert body["type"] == "invalid_request_error"
    assert body["param"] == param
    assert param.split("[")[0].split(".")[0] in body["message"]


OLLAMA_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"messages": {"role": "user"}}, "messages"),
    ({"messages": [{"role": "user", "content": ["a"]}]}, "messages[0].content"),
    ({"options": {"num_ctx": BIG}}, "options.num_ctx"),
    ({"options": {"num_predict": BIG}}, "options.num_predict"),
    ({"options": {"stop": ["x"] * 17}}, "options.stop"),
    ({"options": {"temperature": -1}}, "options.temperature"),
    ({"options": {"seed": -(2**64)}}, "options.seed"),
    ({"options": {"num_batch": "big"}}, "options"),
    ({"top_logprobs": 50}, "top_logprobs"),
    ({"keep_alive": "5m" * 40}, "keep_alive"),
    ({"keep_alive": [1]}, "keep_alive"),
    ({"format": {"enum": list(range(100_000))}}, "format"),
    ({"format": {"type": "string", "pattern": "^(a)\\1$"}}, "format.pattern"),
    ({"format": {"type": 5}}, "format.type"),
    ({"format": "yaml"}, "format"),
    (
        {"tools": tool({"type": "object", "properties": {"a": {"pattern": "(?=x)"}}})},
        "tools[0].function.parameters.properties.a.pattern",
    ),
]


@pytest.mark.parametrize(("patch", "param"), OLLAMA_REFUSED, ids=[p for _, p in OLLAMA_REFUSED])
def test_the_ollama_door_refuses_naming_the_field(patch: dict[str, Any], param: str):
    exc = refusal(ChatRequest, {**CHAT, **patch})
    message = ollama_error_body(exc)["error"]
    assert exc.status == 400
    assert f"'{param}" in message
    assert "Traceback" not in message and "ValidationError" not in message


@pytest.mark.parametrize(
    "patch",
    [
        {"max_tokens": 1, "n": 2, "top_logprobs": 5, "logprobs": True, "seed": -1, "stop": ["\n", "###"]},
        {"logit_bias": {"15043": -100}, "n_probs": 20, "n_predict": -1, "id_slot": -1},
        {"grammar": 'root ::= ("yes" | "no") "!"?\n', "samplers": ["top_k", "temperature"]},
        {"response_format": schema_format({"type": "string", "pattern": "^[a-z]{1,20}$"})},
        {"response_format": schema_format({"type": "object", "properties": {"a": {"enum": ["x", "y"]}}})},
        {"response_format": {"type": "json_object"}},
        {"tools": tool({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})},
        {"options": {"num_ctx": 8192, "top_k": 40, "num_batch": 512}, "unknown_extension": [1, 2]},
    ],
)
def test_ordinary_openai_requests_pass(patch: dict[str, Any]):
    ChatCompletionRequest.model_validate({**CHAT, **patch})


@pytest.mark.parametrize(
    "patch",
    [
        {"options": {"num_predict": -2, "num_ctx": 32768, "stop": ["<|im_end|>"], "num_gpu": 999}},
        {"keep_alive": "1h30m"},
        {"keep_alive": -1},
        {"keep_alive": BIG},
        {"format": "json"},
        {"format": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}},
    ],
)
def test_ordinary_ollama_requests_pass(patch: dict[str, Any]):
    ChatRequest.model_validate({**CHAT, **patch})


def test_other_endpoints_are_bounded_too():
    assert refusal(GenerateRequest, {"model": "m", "options": {"num_ctx": 0}}).param == "options.num_ctx"
    assert refusal(EmbedRequest, {"model": "m", "dimensions": BIG}).param == "dimensions"
    assert refusal(CompletionRequest, {"model": "m", "prompt": "x", "max_tokens": 0}).param == "max_tokens"
    assert refusal(EmbeddingRequest, {"model": "m", "input": 5}).param == "input"
    many = {"model": "m", "input": ["x"] * (limits.MAX_EMBED_INPUTS + 1)}
    assert "at most 2048" in refusal(EmbeddingRequest, many).message
    assert refusal(EmbedRequest, many).param == "input"
    prompts = {"model": "m", "prompt": ["x"] * (limits.MAX_PROMPTS + 1)}
    assert refusal(CompletionRequest, prompts).param == "prompt"


def test_legacy_completions_take_what_openais_api_defines():
    """``logprobs`` is a count there (llama-server's n_probs), and a prompt may be token ids."""
    for prompt in ("x", ["x", "y"], [1, 2, 3], [[1, 2], [3]]):
        CompletionRequest.model_validate({"model": "m", "prompt": prompt, "logprobs": 3})
    assert refusal(CompletionRequest, {"model": "m", "prompt": "x", "logprobs": 10**9}).param == "logprobs"
    assert refusal(CompletionRequest, {"model": "m", "prompt": [1, -5]}).param.startswith("prompt")


def test_a_body_nested_past_the_bound_is_refused_before_any_field_is_read():
    deep: Any = "x"
    for _ in range(limits.MAX_BODY_DEPTH + 1):
        deep = [deep]
    for model in (ChatCompletionRequest, ChatRequest):
        exc = refusal(model, {**CHAT, "extra": deep})
        assert "nested more than" in exc.message


def test_an_options_union_member_never_shows_in_the_param():
    assert field_of(("messages", 0, "content", "list[dict[str,any]]")) == "messages[0].content"
    assert field_of(("stop", "constrained-str")) == "stop"
    assert field_of(("options", "Options", "seed")) == "options.seed"
    assert field_of(()) == "body"


def test_a_union_type_mismatch_reads_as_one_reason():
    exc = refusal(ChatCompletionRequest, {**CHAT, "messages": [{"role": "user", "content": 5}]})
    assert (
        exc.message
        == "invalid request: 'messages[0].content': Input should be a valid string or a valid list"
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        (0, 0.0),
        (-1, math.inf),
        ("-1m", math.inf),
        (BIG, math.inf),  # past Go's longest duration: clamped to forever, not overflowed
        (10**400, math.inf),
        (1e300, math.inf),
        ("9999999999h", math.inf),
        (-(10**400), math.inf),
        ("1.5h", 5400.0),
    ],
)
def test_keep_alive_is_parsed_and_clamped_without_overflow(value: Any, seconds: float):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["forever", "5 minutes", "1e400", "h" * 65, True])
def test_keep_alive_that_is_no_duration_is_refused(value: Any):
    with pytest.raises(InvalidRequest) as caught:
        parse_keep_alive(value)
    assert caught.value.param == "keep_alive"


SCHEMA_REFUSED: list[tuple[Any, str]] = [
    ([], "must be a JSON schema object"),
    (
        {"type": "object", "properties": {f"p{i}": {} for i in range(limits.MAX_SCHEMA_PROPERTIES + 1)}},
        "properties",
    ),
    ({"anyOf": [{"enum": list(range(100))}, {"enum": list(range(100))}]}, "enum values"),
    ({"type": "string", "maxLength": limits.MAX_REPEAT + 1}, "maxLength"),
    ({"type": "array", "minItems": 10**9}, "minItems"),
    ({"description": "x" * limits.MAX_SCHEMA_BYTES}, "bytes"),
    ({"type": "object", "patternProperties": {"[": {}}}, "regular expression"),
    ({"minimum": "zero"}, "not a valid JSON schema"),
]


@pytest.mark.parametrize(("schema", "why"), SCHEMA_REFUSED, ids=[w for _, w in SCHEMA_REFUSED])
def test_schemas_over_the_bounds_or_invalid_are_refused(schema: Any, why: str):
    with pytest.raises(InvalidRequest, match=why):
        check_json_schema(schema, "format")


def test_data_keywords_are_not_read_as_schema():
    check_json_schema({"type": "object", "default": {"pattern": "(("}, "examples": [{"enum": 5}]}, "format")


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("((", "not a valid regular expression"),
        ("^(?=a)b$", "lookaround"),
        ("^(?<name>a)$", "named group"),
        ("^(?i)a$", "inline flag"),
        ("^(a)\\1$", "backreference"),
        ("^(?P<n>a)(?P=n)$", "'\\(\\?'"),
        ("^a{0,5000}$", "repeats more than"),
        ("a" * (limits.MAX_PATTERN_CHARS + 1), "longer than"),
        ("(a)" * (limits.MAX_PATTERN_GROUPS + 1), "groups"),
    ],
)
def test_patterns_llama_cpp_cannot_take_are_refused(pattern: str, why: str):
    with pytest.raises(InvalidRequest, match=why):
        check_pattern(pattern, "p")


@pytest.mark.parametrize("pattern", ["^[a-z]+$", "^\\d{3}-\\d{4}$", "[\\]\\\\1]", "^(?:ab|cd){2,8}$", "abc"])
def test_patterns_within_the_subset_pass(pattern: str):
    check_pattern(pattern, "p")


GRAMMARS_OK = [
    'root ::= "a"',
    'root ::= answer\nanswer ::= ("yes" | "no") [.!]?  # a comment\n',
    'root ::= [a-z]{1,5} x*\nx ::= "\\x41" | "\\u00e9" | <[12]> | !<hello>',
    'root ::= (\n  "a"\n  | "b"\n)+',
    'root ::= x\nx ::= "a" x | ""',
    "root ::= .{0,2000}",
    'root ::= [^"\\\\]*\r\n',
]
GRAMMARS_BAD = [
    ('root ::= "a', "end of input"),
    ("root ::= b", "undefined rule 'b'"),
    ('roo ::= "a"', "no 'root' rule"),
    ('root ::= ("a"', "expecting '\\)'"),
    ("root ::= [a-", "end of input"),
    ('root ::= "a"{3000}', "repetition over"),
    ('root ::= "a"{5,2}', "below its minimum"),
    ('root ::= x\nx ::= x "a"', "left-recursive"),
    ('root ::= x\nx ::= y? x "a"\ny ::= "b"', "left-recursive"),
    ('root := "a"', "'::='"),
    ("root ::= *", "nothing before it"),
    ('root ::= "\\q"', "unknown escape"),
    ('root ::= "a" )', "newline or the end"),
    ("root ::= <[12a]>", "token id"),
    ("root ::= " + " | ".join(['"a"'] * (limits.MAX_GRAMMAR_ALTERNATIVES + 2)), "alternatives"),
    (
        "root ::= " + "(" * (limits.MAX_GRAMMAR_DEPTH + 1) + '"a"' + ")" * (limits.MAX_GRAMMAR_DEPTH + 1),
        "nested",
    ),
    ('root ::= "' + "a" * limits.MAX_GRAMMAR_BYTES + '"', "bytes"),
]


@pytest.mark.parametrize("grammar", GRAMMARS_OK)
def test_grammars_llama_cpp_accepts_pass(grammar: str):
    check_grammar(grammar)


@pytest.mark.parametrize(("grammar", "why"), GRAMMARS_BAD, ids=[w for _, w in GRAMMARS_BAD])
def test_malformed_or_oversized_grammars_are_refused(grammar: str, why: str):
    with pytest.raises(GrammarError, match=why):
        check_grammar(grammar)


def test_options_bounds_hold_for_modelfile_parameters_too():
    with pytest.raises(ValidationError):
        Options.model_validate({"num_ctx": BIG})
