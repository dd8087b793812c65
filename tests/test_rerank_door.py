"""The rerank door's converters, as tables: wire -> RerankCall, RerankResult -> wire, and the engine's
answer -> RerankResult."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from enginehouse.api.invalid import invalid_request
from enginehouse.api.limits import MAX_RERANK_CHARS, MAX_RERANK_DOCUMENTS
from enginehouse.api.rerank_door import (
    OllamaRerankRequest,
    RerankRequest,
    ollama_rerank_response,
    rerank_call,
    rerank_response,
)
from enginehouse.canonical import Ranked, RerankCall, RerankResult
from enginehouse.engines.base import rerank_result, too_long
from enginehouse.errors import ContextOverflow, RunnerError

DOCS = ["cats purr", "dogs bark", "fish swim"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "r", "query": "q", "documents": DOCS}, RerankCall("r", "q", DOCS)),
        (  # Cohere's v1 and Jina's document objects; Jina's query object
            {"model": "r", "query": {"text": "q"}, "documents": [{"text": "a"}, "b"], "top_n": 1},
            RerankCall("r", "q", ["a", "b"], top_n=1),
        ),
        (  # fields the gateway does not use are ignored, as the services ignore them
            {
                "model": "r",
                "query": "q",
                "documents": ["a"],
                "rank_fields": ["text"],
                "max_chunks_per_doc": 3,
            },
            RerankCall("r", "q", ["a"]),
        ),
        (  # keep_alive is Ollama's field: the Jina/Cohere door ignores it
            {"model": "r", "query": "q", "documents": ["a"], "keep_alive": "1m"},
            RerankCall("r", "q", ["a"]),
        ),
    ],
)
def test_rerank_call(body: dict[str, Any], expected: RerankCall) -> None:
    assert rerank_call(RerankRequest.model_validate(body)) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"model": "r", "query": "q", "documents": DOCS, "keep_alive": "1m"},
            RerankCall("r", "q", DOCS, keep_alive=60.0),
        ),
        ({"model": "r", "query": ""}, RerankCall("r", "", [])),  # no documents: a load
        (
            {"model": "r", "query": "q", "documents": ["a"], "keep_alive": 0},
            RerankCall("r", "q", ["a"], keep_alive=0),
        ),
    ],
)
def test_ollama_rerank_call(body: dict[str, Any], expected: RerankCall) -> None:
    assert rerank_call(OllamaRerankRequest.model_validate(body)) == expected


TOO_LONG = "x" * (MAX_RERANK_CHARS + 1)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": "q", "documents": ["a"]}, "model"),
        ({"model": "", "query": "q", "documents": ["a"]}, "model"),
        ({"model": "r", "documents": ["a"]}, "query"),
        ({"model": "r", "query": "q"}, "documents"),
        ({"model": "r", "query": "q", "documents": []}, "documents"),
        ({"model": "r", "query": "q", "documents": "a"}, "documents"),
        ({"model": "r", "query": "q", "documents": [1]}, "documents[0]"),
        ({"model": "r", "query": "q", "documents": [{"content": "a"}]}, "documents[0]"),
        ({"model": "r", "query": "q", "documents": ["a"] * (MAX_RERANK_DOCUMENTS + 1)}, "documents"),
        ({"model": "r", "query": TOO_LONG, "documents": ["a"]}, "query"),
        ({"model": "r", "query": "q", "documents": ["a", TOO_LONG]}, "documents[1]"),
        ({"model": "r", "query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"model": "r", "query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
        ({"model": "r", "query": "q", "documents": ["a"], "return_documents": "maybe"}, "return_documents"),
    ],
)
def test_invalid_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as exc:
        RerankRequest.model_validate(body)
    assert invalid_request(exc.value).param == param


def test_nesting_is_bounded() -> None:
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    with pytest.raises(Exception, match="nested more than"):
        RerankRequest.model_validate({"model": "r", "query": "q", "documents": ["a"], "extra": deep})


CALL = RerankCall("r", "q", DOCS)
RESULT = RerankResult([Ranked(2, 0.9), Ranked(0, 0.5)], total_tokens=21)


@pytest.mark.parametrize(
    ("return_documents", "expected"),
    [
        (False, [{"index": 2, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.5}]),
        (
            True,
            [
                {"index": 2, "relevance_score": 0.9, "document": {"text": "fish swim"}},
                {"index": 0, "relevance_score": 0.5, "document": {"text": "cats purr"}},
            ],
        ),
    ],
)
def test_responses(return_documents: bool, expected: list[dict[str, Any]]) -> None:
    out = rerank_response("alias", CALL, RESULT, return_documents)
    assert out["id"].startswith("rerank-") and out["model"] == "alias" and out["object"] == "list"
    assert out["results"] == expected
    assert out["usage"] == {"prompt_tokens": 21, "total_tokens": 21}
    ollama = ollama_rerank_response("alias", CALL, RESULT, return_documents, total_ns=5, load_ns=2)
    assert ollama == {
        "model": "alias",
        "results": expected,
        "total_duration": 5,
        "load_duration": 2,
        "prompt_eval_count": 21,
    }


def _engine(*pairs: tuple[int, float], tokens: int = 9) -> dict[str, Any]:
    return {
        "results": [{"index": i, "relevance_score": s} for i, s in pairs],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@pytest.mark.parametrize(
    ("answer", "top_n", "expected"),
    [
        (_engine((0, 0.1), (1, 0.7), (2, -3.0)), None, [Ranked(1, 0.7), Ranked(0, 0.1), Ranked(2, -3.0)]),
        (_engine((0, 0.1), (1, 0.7), (2, -3.0)), 2, [Ranked(1, 0.7), Ranked(0, 0.1)]),
        (_engine((0, 0.1), (1, 0.7), (2, -3.0)), 10, [Ranked(1, 0.7), Ranked(0, 0.1), Ranked(2, -3.0)]),
        (_engine((1, 0.7)), 1, [Ranked(1, 0.7)]),  # the engine applied top_n itself
    ],
)
def test_engine_answers_are_ordered_and_cut(
    answer: dict[str, Any], top_n: int | None, expected: list[Ranked]
) -> None:
    assert rerank_result(answer, 3, top_n) == RerankResult(expected, 9)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"data": []}, "malformed"),
        ({"results": [{"index": 0}]}, "malformed"),
        ({"results": [{"index": "a", "relevance_score": 1}]}, "malformed"),
        (_engine((3, 0.5)), "not sent"),
        (_engine((-1, 0.5)), "not sent"),
    ],
)
def test_malformed_engine_answers_are_the_engines_fault(answer: dict[str, Any], message: str) -> None:
    with pytest.raises(RunnerError, match=message):
        rerank_result(answer, 3, None)


def test_an_encoders_too_long_pair_is_the_clients_error() -> None:
    message = "input (700 tokens) is too large to process. "
    message += "increase the physical batch size (current batch size: 512)"
    found = too_long(RunnerError(message))
    assert isinstance(found, ContextOverflow) and "700 tokens" in found.message and "(512)" in found.message
    assert too_long(RunnerError("the engine closed the stream early")) is None
