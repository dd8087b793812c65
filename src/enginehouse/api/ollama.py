"""Wire types of Ollama's API (its ``docs/api.md`` and ``api/types.go``), validated once per request.

Unknown fields are ignored, as Ollama does; known fields are type-checked so a bad request gets a clear
400 instead of a failure deep inside an engine.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Options(_Wire):
    """The runtime options of a request (``options``) or a Modelfile's ``PARAMETER`` lines."""

    model_config = ConfigDict(extra="allow")  # kept for forward compatibility, reported as ignored

    num_ctx: int | None = Field(None, ge=1)
    num_predict: int | None = Field(None, ge=-2)
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, ge=0)
    repeat_last_n: int | None = Field(None, ge=-1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    num_keep: int | None = Field(None, ge=-1)
    num_thread: int | None = Field(None, ge=0)
    num_gpu: int | None = Field(None, ge=-1)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class ToolCallFunction(_Wire):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    index: int | None = None


class ToolCall(_Wire):
    function: ToolCallFunction


class Message(_Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class _GenerationRequest(_Wire):
    model: str = Field(min_length=1)
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: Options | None = None
    stream: bool = True
    keep_alive: str | float | int | None = None
    think: bool | Literal["low", "medium", "high"] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class ChatRequest(_GenerationRequest):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_GenerationRequest):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: list[str] | None = None
    context: list[int] | None = None


class NameRequest(_Wire):
    """``/api/show`` and ``/api/delete`` take ``model`` (``name`` is the older spelling)."""

    model: str | None = None
    name: str | None = None
    verbose: bool = False

    @property
    def target(self) -> str:
        return self.model or self.name or ""


class CopyRequest(_Wire):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


class EmbedRequest(_Wire):
    model: str = Field(min_length=1)
    input: str | list[str] = ""
    truncate: bool = True
    options: Options | None = None
    keep_alive: str | float | int | None = None
    dimensions: int | None = Field(None, ge=1)


class EmbeddingsRequest(_Wire):
    """The legacy ``/api/embeddings``: one prompt, one embedding."""

    model: str = Field(min_length=1)
    prompt: str = ""
    options: Options | None = None
    keep_alive: str | float | int | None = None
