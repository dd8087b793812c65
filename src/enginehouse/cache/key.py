"""The cache key: one hash of the canonical request after routing. Pure functions, no I/O.

What goes in: the door and endpoint, the client's body (every field but those in :data:`IGNORED`, with
``stream`` made explicit because it decides the framing of the stored answer), the digest of the model
that answers, the digest of the chat template, the settings of the instance that runs it (engine,
``num_ctx``, flags...) and the API-key scope. Unknown fields are kept: a field we do not know may change
the answer, and a needless miss costs one generation where a false hit returns someone else's answer.

Canonical means key order and whitespace do not matter (the body is re-serialised with sorted keys),
``null`` equals an absent field at the top level and in ``options``, and ``0.0`` equals ``0`` there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

import orjson

Door = Literal["ollama", "openai", "anthropic"]

KEY_VERSION = 1  # bump when the key material changes: old entries then simply miss

# Fields that never change the bytes of the answer. ``stream`` is replaced by an explicit flag;
# ``stream_options`` (include_usage adds a usage event) is kept while streaming.
IGNORED = frozenset({"keep_alive", "stream", "user", "metadata", "store", "service_tier"})

EMBED_ENDPOINTS = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})


def streams(door: Door, endpoint: str, body: Mapping[str, Any]) -> bool:
    """Whether the answer is a stream: Ollama streams unless told not to, OpenAI only when asked."""
    if endpoint in EMBED_ENDPOINTS:
        return False
    stream = body.get("stream")
    return stream is not False if door == "ollama" else bool(stream)


def _number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _number(v) for k, v in mapping.items() if v is not None}


def canonical_body(door: Door, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields that can change the answer, normalised (see the module docstring)."""
    out = _plain({k: v for k, v in body.items() if k not in IGNORED})
    streamed = streams(door, endpoint, body)
    out["stream"] = streamed
    if not streamed:
        out.pop("stream_options", None)
    options = out.get("options")
    if isinstance(options, Mapping):
        out["options"] = _plain(options)
    return out


def cache_key(
    door: Door,
    endpoint: str,
    body: Mapping[str, Any],
    *,
    model_digest: str,
    template_digest: str = "",
    instance: Mapping[str, Any] | None = None,
    scope: str = "",
) -> str | None:
    """A hex key for this request, or None when the body cannot be canonicalised (never cached)."""
    material = {
        "v": KEY_VERSION,
        "door": door,
        "endpoint": endpoint,
        "body": canonical_body(door, endpoint, body),
        "model_digest": model_digest,
        "template_digest": template_digest,
        "instance": dict(instance or {}),
        "scope": scope,
    }
    try:
        encoded = orjson.dumps(material, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return None
    return hashlib.sha256(encoded).hexdigest()


def digest_of(text: str | None) -> str:
    """A template's (or any text's) digest for the key; "" for none."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest() if text else ""


def scope_for(api_key: str | None) -> str:
    """The scope of a caller's entries: a hash of its key (the key itself is never stored)."""
    if not api_key:
        return ""
    return hashlib.sha256(b"enginehouse-cache-scope\0" + api_key.encode()).hexdigest()[:32]


def _effective(name: str, *layers: Mapping[str, Any] | None) -> Any:
    """The first layer that sets ``name`` (request before model defaults)."""
    for layer in layers:
        if isinstance(layer, Mapping) and layer.get(name) is not None:
            return layer[name]
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def is_deterministic(
    door: Door,
    endpoint: str,
    body: Mapping[str, Any],
    model_params: Mapping[str, Any] | None = None,
) -> bool:
    """True when the same request gives the same answer: embeddings, temperature 0 or a fixed seed.

    ``model_params`` are the model's Modelfile PARAMETERs (Ollama names): a model whose default
    temperature is 0 answers deterministically even when the request says nothing. A negative seed
    means "random" to llama.cpp, so it does not count as fixed.
    """
    if endpoint in EMBED_ENDPOINTS:
        return True
    options = body.get("options")
    layers = (options, model_params) if door == "ollama" else (body, options, model_params)
    temperature = _as_float(_effective("temperature", *layers))
    if temperature == 0:
        return True
    seed = _as_float(_effective("seed", *layers))
    return seed is not None and seed >= 0
