"""The rerank door: Jina's and Cohere's ``/v1/rerank`` (also at ``/rerank``) and Ollama-style ``/api/rerank``.

Both shapes share one request: ``model``, ``query``, ``documents`` (strings, or Cohere's and Jina's
``{"text": ...}`` objects), ``top_n`` and ``return_documents``. Each answer lists ``results`` as
``{index, relevance_score, document?}``, best first: Jina's and Cohere's with ``id``, ``model`` and
``usage``, Ollama's with its durations and ``prompt_eval_count``. Pure functions: wire -> RerankCall,
RerankResult -> wire.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from enginehouse.api import limits
from enginehouse.api.limits import MAX_RERANK_CHARS, MAX_RERANK_DOCUMENTS
from enginehouse.api.ollama import KeepAlive
from enginehouse.canonical import RerankCall, RerankResult
from enginehouse.config_values import parse_keep_alive

Text = Annotated[str, Field(max_length=MAX_RERANK_CHARS)]


class _Wire(BaseModel):
    # Unknown fields (Cohere's rank_fields, max_chunks_per_doc; Jina's truncation...) are ignored.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class TextDocument(_Wire):
    """Cohere's (v1) and Jina's document object."""

    text: Text


class RerankRequest(_Wire, limits.DepthBounded):
    model: str = Field(min_length=1, examples=["bge-reranker"])
    query: Text | TextDocument
    documents: list[Text | TextDocument] = Field(min_length=1, max_length=MAX_RERANK_DOCUMENTS)
    top_n: int | None = Field(None, ge=1, le=MAX_RERANK_DOCUMENTS)
    return_documents: bool = False


class OllamaRerankRequest(RerankRequest):
    """``/api/rerank``: as ``/api/embed``, no documents loads the model, and ``keep_alive`` applies."""

    documents: list[Text | TextDocument] = Field(default_factory=list, max_length=MAX_RERANK_DOCUMENTS)
    keep_alive: KeepAlive = None


def _text(value: str | TextDocument) -> str:
    return value if isinstance(value, str) else value.text


def rerank_call(req: RerankRequest) -> RerankCall:
    keep_alive = req.keep_alive if isinstance(req, OllamaRerankRequest) else None
    return RerankCall(
        req.model,
        _text(req.query),
        [_text(d) for d in req.documents],
        top_n=req.top_n,
        keep_alive=parse_keep_alive(keep_alive),
    )


def results(call: RerankCall, result: RerankResult, return_documents: bool) -> list[dict[str, Any]]:
    """``[{index, relevance_score, document?}]``, best first; documents as ``{"text": ...}`` (Jina's
    and Cohere's v1 shape) when asked for."""
    out: list[dict[str, Any]] = []
    for r in result.ranked:
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
        if return_documents:
            item["document"] = {"text": call.documents[r.index]}
        out.append(item)
    return out


def rerank_response(
    model: str, call: RerankCall, result: RerankResult, return_documents: bool
) -> dict[str, Any]:
    """The ``/v1/rerank`` answer: Jina's fields plus Cohere's ``id``."""
    return {
        "id": f"rerank-{uuid.uuid4().hex[:24]}",
        "object": "list",
        "model": model,
        "results": results(call, result, return_documents),
        "usage": {"prompt_tokens": result.total_tokens, "total_tokens": result.total_tokens},
    }


def ollama_rerank_response(
    model: str,
    call: RerankCall,
    result: RerankResult,
    return_documents: bool,
    *,
    total_ns: int,
    load_ns: int,
) -> dict[str, Any]:
    """The ``/api/rerank`` answer, with ``/api/embed``'s durations and token count."""
    return {
        "model": model,
        "results": results(call, result, return_documents),
        "total_duration": total_ns,
        "load_duration": load_ns,
        "prompt_eval_count": result.total_tokens,
    }
