"""Reranking end to end: a real gateway, a real llama-server in rerank mode, and the tiny BERT reranker
(tests/rerank_model.py: MiniLM's tokenizer and encoder under a random one-output head, so its scores are
meaningless). What is tested is the plumbing: every document gets a score, the order is by score, top_n
and return_documents are honoured, each score belongs to its own document, and the three endpoints (and
Cohere's SDK) agree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cohere
import httpx
import ollama
import pytest

from enginehouse.config import Config
from enginehouse.server.runtime import BackgroundServer
from enginehouse.store import BUNDLED_NAME, Store
from tests.conftest import make_config

pytestmark = pytest.mark.slow

NAME = "tiny-reranker:latest"
QUERY = "What do cats like to eat?"
DOCS = [
    "Cats are obligate carnivores and mostly eat meat and fish.",
    "The stock market closed higher on Friday.",
    "A recipe for sourdough bread needs flour, water and salt.",
    "Kittens drink their mother's milk for the first weeks.",
]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, tiny_reranker: Path
) -> Iterator[BackgroundServer]:
    home: Config = make_config(tmp_path_factory.mktemp("rerank-home"), llama_server_bin)
    Store(home.models).import_gguf(tiny_reranker, NAME)
    with BackgroundServer(home) as srv:
        yield srv


def post(server: BackgroundServer, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, timeout=120)


def scores_of(results: list[dict]) -> dict[int, float]:
    return {r["index"]: r["relevance_score"] for r in results}


def test_every_endpoint_scores_every_document_in_order(server: BackgroundServer) -> None:
    seen: dict[str, dict[int, float]] = {}
    for path in ("/v1/rerank", "/rerank", "/api/rerank"):
        resp = post(server, path, {"model": NAME, "query": QUERY, "documents": DOCS})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        results = body["results"]
        assert sorted(r["index"] for r in results) == list(range(len(DOCS)))
        ranked = [r["relevance_score"] for r in results]
        assert ranked == sorted(ranked, reverse=True)
        assert all("document" not in r for r in results)  # not asked for
        assert body["model"] == NAME
        if path == "/api/rerank":
            assert (
                body["prompt_eval_count"] > len(DOCS) and body["total_duration"] >= body["load_duration"] >= 0
            )
        else:
            assert body["usage"]["total_tokens"] > len(DOCS) and body["id"].startswith("rerank-")
        seen[path] = scores_of(results)
    first = seen["/v1/rerank"]
    assert len(set(first.values())) == len(DOCS)  # the model read the texts: four documents, four scores
    for path, scores in seen.items():  # one runner, one model: the same scores through every door
        assert scores == pytest.approx(first, abs=1e-4), path


def test_each_score_belongs_to_its_document(server: BackgroundServer) -> None:
    together = scores_of(
        post(server, "/v1/rerank", {"model": NAME, "query": QUERY, "documents": DOCS}).json()["results"]
    )
    for i, doc in enumerate(DOCS):  # scored alone, a document gets the score it got among the others
        alone = post(server, "/v1/rerank", {"model": NAME, "query": QUERY, "documents": [doc]}).json()[
            "results"
        ]
        assert alone[0]["index"] == 0 and alone[0]["relevance_score"] == pytest.approx(together[i], abs=1e-4)


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/api/rerank"])
def test_top_n_and_return_documents(server: BackgroundServer, path: str) -> None:
    full = post(server, path, {"model": NAME, "query": QUERY, "documents": DOCS}).json()["results"]
    body = {
        "model": NAME,
        "query": {"text": QUERY},
        "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2], {"text": DOCS[3]}],
        "top_n": 2,
        "return_documents": True,
    }
    top = post(server, path, body).json()["results"]
    assert [r["index"] for r in top] == [r["index"] for r in full[:2]]
    assert [r["document"]["text"] for r in top] == [DOCS[r["index"]] for r in top]
    over = post(server, path, {"model": NAME, "query": QUERY, "documents": DOCS, "top_n": 50}).json()[
        "results"
    ]
    assert len(over) == len(DOCS)


def test_cohere_sdk(server: BackgroundServer) -> None:
    client = cohere.Client(api_key="unused", base_url=server.base_url)
    answer = client.rerank(model=NAME, query=QUERY, documents=DOCS, top_n=3, return_documents=True)
    assert len(answer.results) == 3
    scores = [r.relevance_score for r in answer.results]
    assert scores == sorted(scores, reverse=True)
    for r in answer.results:
        assert r.document is not None and r.document.text == DOCS[r.index]


def test_show_lists_rerank_and_embedding_is_refused(server: BackgroundServer) -> None:
    client = ollama.Client(host=server.base_url)
    assert client.show(NAME).capabilities == ["rerank"]
    resp = post(server, "/api/embed", {"model": NAME, "input": "hello"})
    assert resp.status_code == 400 and "is a reranking model" in resp.json()["error"]


def test_empty_ollama_request_loads_the_model(server: BackgroundServer) -> None:
    resp = post(server, "/api/rerank", {"model": NAME, "query": ""})
    assert resp.status_code == 200 and resp.json()["results"] == []
    assert any(m["name"] == NAME for m in httpx.get(server.base_url + "/api/ps").json()["models"])


def test_errors_in_each_doors_shape(server: BackgroundServer) -> None:
    # a chat model is not a reranker: a clear 400 before anything loads
    for path in ("/v1/rerank", "/rerank"):
        resp = post(server, path, {"model": BUNDLED_NAME, "query": "q", "documents": ["a"]})
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert "is not a reranking model" in error["message"] and error["param"] == "model"
        assert error["type"] == "invalid_request_error"
        resp = post(server, path, {"model": NAME, "query": "q", "documents": []})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "documents"
    resp = post(server, "/api/rerank", {"model": BUNDLED_NAME, "query": "q", "documents": ["a"]})
    assert resp.status_code == 400 and "is not a reranking model" in resp.json()["error"]
    assert not any(m["name"] == BUNDLED_NAME for m in httpx.get(server.base_url + "/api/ps").json()["models"])
    resp = post(server, "/api/rerank", {"model": "no-such-model", "query": "q", "documents": ["a"]})
    assert resp.status_code == 404 and isinstance(resp.json()["error"], str)
    # a pair longer than the model's context (512 tokens) is the client's error, and the runner lives on
    resp = post(server, "/v1/rerank", {"model": NAME, "query": "q", "documents": ["a", "word " * 600]})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (
        error["code"] == "context_length_exceeded" and "more than the reranker's context" in error["message"]
    )
    assert post(server, "/v1/rerank", {"model": NAME, "query": "q", "documents": ["a"]}).status_code == 200
