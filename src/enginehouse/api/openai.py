"""Wire types of OpenAI's API, as far as the gateway checks them.

The OpenAI door passes the client's JSON to the engine (which speaks the same dialect), so these models
only validate: the dict that goes upstream is the client's own, fields we do not know included. So the
fields llama-server reads beyond OpenAI's (``grammar``, ``json_schema``, ``n_probs``, ...) are declared
here with their bounds: an unknown field reaches the engine, a known one only within
:mod:`enginehouse.api.limits`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from enginehouse.api import limits, structured
from enginehouse.api.limits import INT32_MAX, MAX_CHOICES, MAX_TOKENS
from enginehouse.api.ollama import Options
from enginehouse.errors import InvalidRequest

__all__ = ["MAX_CHOICES", "ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest"]

Stop = Annotated[str, Field(max_length=limits.MAX_STOP_CHARS)]
Text = Annotated[str, Field(max_length=256)]
Bias = Annotated[float, Field(ge=-100, le=100)]
_EXT = "llama-server extension"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class _Body(_Wire, limits.DepthBounded):
    """A whole request body of this door."""


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # a URL's scheme; base64 has no colon


def image_urls(content: Any) -> list[str]:
    """The ``image_url`` parts' URLs of one message's content (data URLs or links)."""
    if not isinstance(content, list):
        return []
    out = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            out.append(url if isinstance(url, str) else "")
    return out


class StreamOptions(_Wire):
    include_usage: bool | None = None


class LoraAdapter(_Wire):
    id: int = Field(ge=0, le=limits.MAX_LORA)
    scale: float = Field(ge=-100, le=100)


class _LlamaServerFields(_Wire):
    """What llama-server reads beyond OpenAI's fields, bounded (its ``server-common`` parameters)."""

    n_probs: int | None = Field(None, ge=0, le=limits.MAX_TOP_LOGPROBS, description=_EXT)
    n_predict: int | None = Field(None, ge=-1, le=MAX_TOKENS, description=_EXT)
    n_keep: int | None = Field(None, ge=-1, le=MAX_TOKENS, description=_EXT)
    n_indent: int | None = Field(None, ge=0, le=MAX_TOKENS, description=_EXT)
    n_cmpl: int | None = Field(None, ge=1, le=MAX_CHOICES, description=_EXT)
    id_slot: int | None = Field(None, ge=-1, le=65_536, description=_EXT)
    t_max_predict_ms: int | None = Field(None, ge=0, le=INT32_MAX, description=_EXT)
    grammar: str | None = Field(None, max_length=limits.MAX_GRAMMAR_BYTES, description=_EXT + ": GBNF")
    json_schema: dict[str, Any] | None = Field(None, description=_EXT)
    logit_bias: dict[str, Bias] | None = Field(None, max_length=limits.MAX_LOGIT_BIAS)
    samplers: Annotated[list[Text], Field(max_length=limits.MAX_SAMPLERS)] | Text | None = Field(
        None, description=_EXT
    )
    lora: list[LoraAdapter] | None = Field(None, max_length=limits.MAX_LORA, description=_EXT)
    top_k: int | None = Field(None, ge=0, le=INT32_MAX, description=_EXT)
    min_p: float | None = Field(None, ge=0, le=1, description=_EXT)
    typical_p: float | None = Field(None, ge=0, le=1, description=_EXT)
    top_n_sigma: float | None = Field(None, ge=-1, le=100, description=_EXT)
    repeat_penalty: float | None = Field(None, ge=0, le=100, description=_EXT)
    repeat_last_n: int | None = Field(None, ge=-1, le=MAX_TOKENS, description=_EXT)
    mirostat: int | None = Field(None, ge=0, le=2, description=_EXT)
    mirostat_tau: float | None = Field(None, ge=0, le=100, description=_EXT)
    mirostat_eta: float | None = Field(None, ge=0, le=1, description=_EXT)
    dynatemp_range: float | None = Field(None, ge=0, le=100, description=_EXT)
    dynatemp_exponent: float | None = Field(None, ge=0, le=100, description=_EXT)
    xtc_probability: float | None = Field(None, ge=0, le=1, description=_EXT)
    xtc_threshold: float | None = Field(None, ge=0, le=1, description=_EXT)
    dry_multiplier: float | None = Field(None, ge=0, le=100, description=_EXT)
    dry_base: float | None = Field(None, ge=0, le=100, description=_EXT)
    dry_allowed_length: int | None = Field(None, ge=0, le=MAX_TOKENS, description=_EXT)
    dry_penalty_last_n: int | None = Field(None, ge=-1, le=MAX_TOKENS, description=_EXT)
    dry_sequence_breakers: list[Stop] | None = Field(None, max_length=limits.MAX_STOP, description=_EXT)
    response_fields: list[Text] | None = Field(None, max_length=64, description=_EXT)

    @field_validator("grammar")
    @classmethod
    def _grammar_parses(cls, value: str | None) -> str | None:
        if value:
            structured.check_grammar_text(value, "grammar")
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema_checks(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            structured.check_json_schema(value, "json_schema")
        return value


class _Sampling(_Body, _LlamaServerFields):
    model: str = Field(min_length=1, examples=["smollm2:135m"])
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stop: Stop | Annotated[list[Stop], Field(max_length=limits.MAX_STOP)] | None = None
    seed: int | None = Field(None, ge=limits.INT64_MIN, le=limits.INT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=limits.MAX_TOP_LOGPROBS)
    options: Options | None = Field(None, description="Ollama options (num_ctx, top_k, ...): an extension")


Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class Reasoning(_Wire):
    effort: Effort | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(max_length=limits.MAX_MESSAGES)
    response_format: dict[str, Any] | None = None
    reasoning_effort: Effort | None = None
    reasoning: Reasoning | None = Field(None, description="the Responses API's spelling of reasoning_effort")
    tools: list[dict[str, Any]] | None = Field(None, max_length=limits.MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(None, max_length=limits.MAX_TEMPLATE_KWARGS)

    @model_validator(mode="before")
    @classmethod
    def _no_client_templates(cls, data: Any) -> Any:
        """A template is code the engine runs: vLLM renders a request's ``chat_template`` (and one passed
        in ``chat_template_kwargs``), which its advisory for template-driven resource exhaustion shows
        a client can use to stall it. The model's template is the operator's (its Modelfile)."""
        if isinstance(data, dict):
            kwargs = data.get("chat_template_kwargs")
            for param, found in (
                ("chat_template", data),
                ("chat_template_kwargs.chat_template", kwargs if isinstance(kwargs, dict) else {}),
            ):
                if "chat_template" in found:
                    raise InvalidRequest(
                        f"'{param}': a request cannot bring its own chat template; "
                        "set the model's TEMPLATE in a Modelfile instead",
                        param=param,
                    )
        return data

    @model_validator(mode="after")
    def _bounded_images(self) -> ChatCompletionRequest:
        urls = [url for m in self.messages for url in image_urls(m.content)]
        for url in urls:
            # llama-server would fetch an http(s) link itself: a request must not make the machine
            # fetch anything (server-side request forgery, as in vLLM's advisory for media URLs).
            if _SCHEME.match(url) and not url.startswith("data:"):
                raise InvalidRequest(
                    "'messages.content.image_url': send the image as a data URL "
                    "(data:image/png;base64,...); the server fetches no links or files",
                    param="messages.content.image_url",
                )
        limits.check_images([u.split(",", 1)[-1] for u in urls], "messages.content.image_url")
        return self

    @field_validator("response_format")
    @classmethod
    def _response_format_checks(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        structured.check_response_format(value)
        return value

    @field_validator("tools")
    @classmethod
    def _tool_schemas_check(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        structured.check_tools(value)
        return value


Tokens = Annotated[list[Annotated[int, Field(ge=0, le=INT32_MAX)]], Field(max_length=limits.MAX_TOKENS)]


class CompletionRequest(_Sampling):
    # OpenAI's prompt: a string, a list of them, token ids, or a list of token-id lists
    prompt: (
        str
        | Annotated[list[str], Field(max_length=limits.MAX_PROMPTS)]
        | Tokens
        | Annotated[list[Tokens], Field(max_length=limits.MAX_PROMPTS)]
    )
    # The legacy API's logprobs is a count of candidates per token (llama-server's n_probs), not a switch
    logprobs: int | None = Field(None, ge=0, le=limits.MAX_TOP_LOGPROBS)  # type: ignore[assignment]
    suffix: str | None = None
    echo: bool | None = None


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1, examples=["smollm2:135m"])
    input: str | Annotated[list[str] | list[int] | list[list[int]], Field(max_length=limits.MAX_EMBED_INPUTS)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1, le=65_536)
