"""Wire types of OpenAI's API, as far as the gateway checks them.

The OpenAI door passes the client's JSON to the engine (which speaks the same dialect), so these models
only validate: the dict that goes upstream is the client's own, fields we do not know included.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_CHOICES = 8


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Wire):
    include_usage: bool | None = None


class _Sampling(_Wire):
    model: str = Field(min_length=1, examples=["smollm2:135m"])
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    options: dict[str, Any] | None = Field(
        None, description="Ollama options (num_ctx, top_k, ...): an extension"
    )


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    suffix: str | None = None
    echo: bool | None = None


class EmbeddingRequest(_Wire):
    model: str = Field(min_length=1, examples=["smollm2:135m"])
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
