"""Wire types of Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``), as far as
the gateway checks them.

The top-level fields are bounded here (the same bounds as the other doors, :mod:`enginehouse.api.limits`);
content blocks, tools, ``tool_choice`` and ``thinking`` are checked where they are converted
(:mod:`enginehouse.api.anthropic_door`), which names the offending field. Fields we do not know are
accepted and ignored: coding agents send beta fields (``context_management``, ``service_tier``...) that
change nothing a local model could honour.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from enginehouse.api import limits
from enginehouse.api.limits import INT32_MAX, MAX_TOKENS

__all__ = ["CountTokensRequest", "MessagesRequest"]

StopSequence = Annotated[str, Field(min_length=1, max_length=limits.MAX_STOP_CHARS)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class AnthropicMessage(_Wire):
    # "system" inside messages is not Anthropic's, but coding agents send it: taken as a system turn.
    role: Literal["user", "assistant", "system"]
    content: str | Annotated[list[dict[str, Any]], Field(max_length=limits.MAX_MESSAGES)]


class CountTokensRequest(_Wire, limits.DepthBounded):
    """What ``count_tokens`` reads: the prompt side of a Messages request."""

    model: str = Field(min_length=1, examples=["smollm2:135m"])
    messages: list[AnthropicMessage] = Field(max_length=limits.MAX_MESSAGES)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = Field(None, max_length=limits.MAX_TOOLS)
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1, le=MAX_TOKENS)  # required, as Anthropic's API has it
    stop_sequences: Annotated[list[StopSequence], Field(max_length=limits.MAX_STOP)] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=INT32_MAX)
    metadata: dict[str, Any] | None = None  # accepted, ignored
    output_config: dict[str, Any] | None = None  # format: structured output; effort: ignored
    stream: bool | None = None
