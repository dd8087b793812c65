"""Wire types of OpenAI's Responses API (``POST /v1/responses``), as far as the gateway checks them.

Only the envelope is a model here: the items of ``input``, the tools and ``text.format`` have many
shapes, and :mod:`enginehouse.api.responses_door` reads them one by one, naming the offending field
(``input[2].content[0].image_url``) the way OpenAI's ``param`` does. Fields OpenAI has and this door
does not use (``include``, ``truncation``, ``service_tier``, ``prompt_cache_key``...) are accepted and
ignored, as the other OpenAI endpoints do with fields they do not know.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from enginehouse.api import limits
from enginehouse.api.limits import MAX_TOKENS

MAX_METADATA = 16  # OpenAI's bounds on metadata: 16 pairs, keys of 64 and values of 512 characters
Key = Annotated[str, Field(max_length=64)]
Value = Annotated[str, Field(max_length=512)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class Reasoning(_Wire):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class TextOptions(_Wire):
    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(_Wire, limits.DepthBounded):
    model: str = Field(min_length=1, examples=["smollm2:135m"])
    input: str | Annotated[list[dict[str, Any]], Field(max_length=limits.MAX_MESSAGES)] = ""
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = Field(None, max_length=limits.MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    text: TextOptions | None = None
    reasoning: Reasoning | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = Field(None, max_length=128)
    metadata: dict[Key, Value] | None = Field(None, max_length=MAX_METADATA)
    parallel_tool_calls: bool | None = None
    user: str | None = Field(None, max_length=256)
