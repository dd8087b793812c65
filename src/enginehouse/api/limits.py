"""The bounds both front doors enforce before a request reaches an engine, in one table.

Numbers that size work an engine does (tokens to generate, context, threads) are capped so that no value
overflows the engine's 32-bit integers or asks for more than any model can do; counts that cost CPU
before anything runs (messages, tools, stop strings, nesting) are capped so that parsing stays cheap.
Structured-output bounds (schemas, patterns, grammars) were picked from ``bench/schema_compile.py``:
what llama-server compiles and samples with in well under a second on a 2-core machine.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator

from enginehouse.errors import InvalidRequest

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Tokens and context: 2^20 is above every trained context of today's models (1M); the engine stops at
# its own context anyway, so a bigger number only ever meant "no limit".
MAX_TOKENS = 1_048_576
MAX_NUM_CTX = 1_048_576
MAX_NUM_BATCH = 65_536
MAX_NUM_THREAD = 1_024
MAX_NUM_GPU = 4_096  # layers to offload; 999 is the usual "all of them"
MAX_TOP_LOGPROBS = 20  # OpenAI's cap; llama-server's n_probs shares it (10^9 lists the vocabulary)
MAX_CHOICES = 8
MAX_STOP = 16  # OpenAI allows 4; Modelfiles often carry more
MAX_STOP_CHARS = 512
MAX_LOGIT_BIAS = 1_024
MAX_SAMPLERS = 32
MAX_LORA = 64

MAX_MESSAGES = 10_000
MAX_PROMPTS = 32  # /v1/completions with a list of prompts: one generation each, like n
MAX_EMBED_INPUTS = 2_048  # OpenAI's cap on one embeddings request
MAX_RERANK_DOCUMENTS = 1_000  # Cohere's recommended cap on one rerank request; each is one engine task
MAX_RERANK_CHARS = 65_536  # a query or one document: ~16k tokens, past the context of today's rerankers
MAX_TOOLS = 128  # OpenAI's cap
MAX_TEMPLATE_KWARGS = 64  # chat_template_kwargs: a few switches (enable_thinking, reasoning_effort)
MAX_BODY_DEPTH = 128  # JSON nesting of a whole request body
# Images: each one is decoded and encoded by the engine's projector before the first token (seconds of
# CPU per image for real projectors), so a request carries a few, each within OpenAI's 20 MB.
MAX_IMAGES = 16  # per request, all messages together
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # decoded
MAX_IMAGE_CHARS = (MAX_IMAGE_BYTES + 2) // 3 * 4  # the same, base64-encoded

# Structured output (see bench/schema_compile.py and docs/api.md for the measured table).
MAX_SCHEMA_BYTES = 32_768  # a schema, serialised
MAX_SCHEMA_DEPTH = 64  # JSON nesting inside one schema (two levels per nested object)
MAX_SCHEMA_PROPERTIES = 128  # properties of one schema, all objects together
MAX_SCHEMA_ENUM = 128  # values of one enum (or const alternatives), all enums together
MAX_PATTERN_CHARS = 512
MAX_PATTERN_GROUPS = 32
MAX_REPEAT = 2_000  # {m,n} in a pattern, a grammar or minLength/maxItems: llama.cpp's own threshold
MAX_GRAMMAR_BYTES = 32_768
MAX_GRAMMAR_ALTERNATIVES = 512  # all '|' in a grammar together
MAX_GRAMMAR_DEPTH = 32  # nested parentheses


def param_path(parts: tuple[Any, ...] | list[Any]) -> str:
    """('messages', 0, 'content') -> 'messages[0].content', the way OpenAI names a field."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def check_depth(value: Any, limit: int = MAX_BODY_DEPTH, param: str | None = None) -> None:
    """Refuse JSON nested deeper than ``limit`` (iterative: a deep body cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            where = f"'{param}' " if param else "the request body "
            raise InvalidRequest(f"{where}is nested more than {limit} levels deep", param=param)
        stack.extend((child, depth + 1) for child in children)


def check_count(items: Any, limit: int, param: str, what: str) -> None:
    if isinstance(items, list | dict) and len(items) > limit:
        raise InvalidRequest(f"'{param}': at most {limit} {what} are allowed, got {len(items)}", param=param)


def check_images(images: list[str], param: str) -> None:
    """Bound a request's images (base64 data, all messages together): how many and how big."""
    check_count(images, MAX_IMAGES, param, "images")
    for image in images:
        if len(image) > MAX_IMAGE_CHARS:
            mib = MAX_IMAGE_BYTES // (1024 * 1024)
            raise InvalidRequest(f"'{param}': an image is larger than {mib} MiB", param=param)


class DepthBounded(BaseModel):
    """A whole request body: its nesting is bounded before any field is read (every door's bodies)."""

    @model_validator(mode="before")
    @classmethod
    def _bounded_depth(cls, data: Any) -> Any:
        check_depth(data)
        return data
