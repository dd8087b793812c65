"""The server's OpenAPI document, built from the same pydantic models that validate requests.

Served at ``GET /openapi.json``; the test suite fuzzes the server against it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from enginehouse import __version__
from enginehouse.api import ollama as o
from enginehouse.api import openai as oa
from enginehouse.api import rerank_door as rr

# (method, path, request model or None, summary)
OPERATIONS: tuple[tuple[str, str, type[BaseModel] | None, str], ...] = (
    ("get", "/", None, "Liveness: 'Ollama is running'"),
    ("get", "/api/version", None, "Server version"),
    ("get", "/api/tags", None, "Models in the store"),
    ("get", "/api/ps", None, "Loaded models"),
    ("get", "/api/status", None, "Memory budget and runners (extension, read-only)"),
    ("get", "/api/logs", None, "Runner logs (extension, read-only)"),
    ("get", "/api/route/recent", None, "Last routing decisions (extension, read-only)"),
    ("get", "/api/bench", None, "Saved bench reports (extension, read-only)"),
    ("post", "/api/show", o.NameRequest, "A model's metadata"),
    ("post", "/api/chat", o.ChatRequest, "Chat (NDJSON stream unless stream=false)"),
    ("post", "/api/generate", o.GenerateRequest, "Completion (NDJSON stream unless stream=false)"),
    ("post", "/api/embed", o.EmbedRequest, "Embeddings"),
    ("post", "/api/embeddings", o.EmbeddingsRequest, "One embedding (legacy)"),
    ("post", "/api/copy", o.CopyRequest, "Copy a model"),
    ("delete", "/api/delete", o.NameRequest, "Delete a model"),
    ("get", "/v1/models", None, "Models (OpenAI)"),
    ("post", "/v1/chat/completions", oa.ChatCompletionRequest, "Chat completions (SSE when stream=true)"),
    ("post", "/v1/completions", oa.CompletionRequest, "Completions (SSE when stream=true)"),
    ("post", "/v1/embeddings", oa.EmbeddingRequest, "Embeddings (OpenAI)"),
    ("post", "/v1/rerank", rr.RerankRequest, "Rerank documents (Jina/Cohere shape)"),
    ("post", "/rerank", rr.RerankRequest, "Rerank documents (Jina/Cohere shape)"),
    ("post", "/api/rerank", rr.OllamaRerankRequest, "Rerank documents (extension, Ollama style)"),
)


def _error_schema(openai: bool) -> dict[str, Any]:
    if openai:
        inner = {"type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"}}}
        return {"type": "object", "properties": {"error": inner}, "required": ["error"]}
    return {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def build_openapi(extra: tuple[tuple[str, str, type[BaseModel] | None, str], ...] = ()) -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for method, path, model, summary in OPERATIONS + extra:
        openai = path.startswith("/v1") or path == "/rerank"
        error = {"description": "error", "content": {"application/json": {"schema": _error_schema(openai)}}}
        op: dict[str, Any] = {
            "summary": summary,
            "responses": {"200": {"description": "success"}, "400": error, "404": error},
        }
        if model is not None:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            components[model.__name__] = schema
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
                },
            }
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "enginehouse",
            "version": __version__,
            "description": "Ollama's API under /api and OpenAI's under /v1.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
