"""Wire types of Ollama's API (its ``docs/api.md`` and ``api/types.go``), validated once per request.

Unknown fields are ignored, as Ollama does; known fields are type-checked so a bad request gets a clear
400 instead of a failure deep inside an engine.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from enginehouse.api import limits, structured
from enginehouse.api.limits import INT32_MAX, MAX_NUM_CTX, MAX_TOKENS

Stop = Annotated[str, Field(max_length=limits.MAX_STOP_CHARS)]
#: Ollama's keep_alive: a Go duration ("5m"), or seconds; parsed and clamped by config_values.
KeepAlive = Annotated[str, Field(max_length=64)] | float | int | None


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)


class _Body(_Wire, limits.DepthBounded):
    """A whole request body of this door."""


class Options(_Wire):
    """The runtime options of a request (``options``) or a Modelfile's ``PARAMETER`` lines."""

    # extra="allow": kept for forward compatibility, reported as ignored
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    num_ctx: int | None = Field(None, ge=1, le=MAX_NUM_CTX)
    num_predict: int | None = Field(None, ge=-2, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=100)
    top_k: int | None = Field(None, ge=0, le=INT32_MAX)
    top_p: float | None = Field(None, ge=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, ge=0, le=100)
    repeat_last_n: int | None = Field(None, ge=-1, le=MAX_NUM_CTX)
    presence_penalty: float | None = Field(None, ge=-100, le=100)
    frequency_penalty: float | None = Field(None, ge=-100, le=100)
    seed: int | None = Field(None, ge=limits.INT64_MIN, le=limits.INT64_MAX)
    stop: list[Stop] | None = Field(None, max_length=limits.MAX_STOP)
    num_keep: int | None = Field(None, ge=-1, le=MAX_NUM_CTX)
    num_thread: int | None = Field(None, ge=0, le=limits.MAX_NUM_THREAD)
    num_gpu: int | None = Field(None, ge=-1, le=limits.MAX_NUM_GPU)

    @model_validator(mode="before")
    @classmethod
    def _bounded_num_batch(cls, data: Any) -> Any:
        # Not a field (the gateway leaves it to the runner's own default and says so), but bounded all
        # the same: a client's typo should not look accepted.
        batch = data.get("num_batch") if isinstance(data, dict) else None
        if batch is not None and (
            not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= limits.MAX_NUM_BATCH
        ):
            raise ValueError(f"num_batch must be an integer from 1 to {limits.MAX_NUM_BATCH}")
        return data

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


class _GenerationRequest(_Body):
    model: str = Field(min_length=1)
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: Options | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    think: bool | Literal["low", "medium", "high"] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=limits.MAX_TOP_LOGPROBS)

    @field_validator("format")
    @classmethod
    def _schema_checks(cls, value: Any) -> Any:
        if isinstance(value, dict):
            structured.check_json_schema(value, "format")
        return value


class ChatRequest(_GenerationRequest):
    messages: list[Message] = Field(default_factory=list, max_length=limits.MAX_MESSAGES)
    tools: list[dict[str, Any]] | None = Field(None, max_length=limits.MAX_TOOLS)

    @model_validator(mode="after")
    def _bounded_images(self) -> ChatRequest:
        limits.check_images([i for m in self.messages for i in m.images or []], "messages.images")
        return self

    @field_validator("tools")
    @classmethod
    def _tool_schemas_check(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        structured.check_tools(value)
        return value


class GenerateRequest(_GenerationRequest):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: list[str] | None = None
    context: list[int] | None = None

    @field_validator("images")
    @classmethod
    def _bounded_images(cls, value: list[str] | None) -> list[str] | None:
        limits.check_images(value or [], "images")
        return value


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


class EmbedRequest(_Body):
    model: str = Field(min_length=1)
    input: str | Annotated[list[str], Field(max_length=limits.MAX_EMBED_INPUTS)] = ""
    truncate: bool = True
    options: Options | None = None
    keep_alive: KeepAlive = None
    dimensions: int | None = Field(None, ge=1, le=65_536)


class EmbeddingsRequest(_Body):
    """The legacy ``/api/embeddings``: one prompt, one embedding."""

    model: str = Field(min_length=1)
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive = None
