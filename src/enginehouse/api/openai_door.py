"""OpenAI's door: its wire requests as canonical calls, and canonical events as chat-completion chunks.

Most OpenAI requests never need the events side: client and engine speak the same dialect, so the
body goes to the engine as it came and the engine's bytes come back untouched (``server/relay.py``).
The calls made here are what routing reads, and what an engine gets when the gateway must rewrite the
request: a model with an Ollama (Go) template, whose prompt the gateway renders so that both doors and
every engine give the model the same prompt (``api/prepare.py``); the completion stream then comes back
through :class:`OpenAIChatEncoder`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from enginehouse.api.thinking import think_from_openai
from enginehouse.canonical import (
    SAMPLING,
    ChatCall,
    CompletionCall,
    EmbedCall,
    Event,
    Message,
    ReasoningDelta,
    Tally,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from enginehouse.errors import EnginehouseError, InvalidRequest, openai_error_body
from enginehouse.wire import SSE_DONE, sse


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts: the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def _images(content: Any) -> list[str]:
    """Base64 data of ``image_url`` parts given as data URLs."""
    if not isinstance(content, list):
        return []
    out = []
    for part in content:
        url = ((part.get("image_url") or {}) if isinstance(part, dict) else {}).get("url", "")
        if isinstance(url, str) and url.startswith("data:") and "," in url:
            out.append(url.split(",", 1)[1])
    return out


def _message(m: dict[str, Any], names: dict[str, str]) -> Message:
    role = "system" if m.get("role") == "developer" else str(m.get("role", "user"))
    calls = []
    for c in m.get("tool_calls") or []:
        fn = c.get("function") or {}
        args = fn.get("arguments") or "{}"
        try:
            parsed = orjson.loads(args) if isinstance(args, str) else args
        except orjson.JSONDecodeError:
            raise InvalidRequest(f"tool call arguments are not JSON: {args[:80]!r}") from None
        names[c.get("id", "")] = fn.get("name", "")
        calls.append(ToolCall(fn.get("name", ""), parsed, c.get("id")))
    msg = Message(role, _text(m.get("content")), _images(m.get("content")), calls)
    if role == "tool":
        msg.tool_name = m.get("name") or names.get(m.get("tool_call_id", ""), "")
        msg.tool_call_id = m.get("tool_call_id")
    return msg


def _sampling(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in SAMPLING if data.get(k) is not None}


def chat_call(data: dict[str, Any]) -> ChatCall:
    """A validated ``/v1/chat/completions`` body (``max_completion_tokens`` already mapped)."""
    names: dict[str, str] = {}  # tool_call_id -> function name, for the tool results
    messages = [_message(m, names) for m in data.get("messages") or [] if isinstance(m, dict)]
    logprobs = (data.get("top_logprobs") or 0) if data.get("logprobs") else None
    return ChatCall(
        model=data["model"],
        messages=messages,
        tools=data.get("tools") or None,
        tool_choice=data.get("tool_choice"),
        sampling=_sampling(data),
        response_format=data.get("response_format"),
        logprobs=logprobs,
        stream=bool(data.get("stream")),
        include_usage=bool((data.get("stream_options") or {}).get("include_usage")),
        n=data.get("n") or 1,
        think=think_from_openai(data),
    )


def completion_call(data: dict[str, Any]) -> CompletionCall:
    """A validated ``/v1/completions`` body; a list of prompts is read by its first one here."""
    prompt = data.get("prompt")
    first = prompt[0] if isinstance(prompt, list) and prompt else prompt
    return CompletionCall(
        model=data["model"],
        prompt=first if isinstance(first, str) else "",
        sampling=_sampling(data),
        stream=bool(data.get("stream")),
    )


def embed_call(data: dict[str, Any]) -> EmbedCall:
    value = data.get("input")
    inputs = [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]
    return EmbedCall(data["model"], inputs, dimensions=data.get("dimensions"))


class OpenAIChatEncoder:
    """Canonical events in, ``chat.completion.chunk`` objects out (and the whole answer for
    ``stream: false``). Reasoning streams as ``reasoning_content`` deltas (llama-server's and vLLM's
    field); tool calls are gathered and sent in one chunk before the finish."""

    content_type = "text/event-stream"
    closing_bytes = SSE_DONE

    def __init__(self, model: str, include_usage: bool, started: float) -> None:
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.include_usage = include_usage
        self.tally = Tally(started)
        self.usage: dict[str, Any] | None = None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self._args: dict[int, dict[str, str]] = {}
        self.started = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def objects(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, TextDelta):
            return [self._content(event.text)] if event.text else []
        if isinstance(event, ReasoningDelta):
            return [self._reasoning(event.text)] if event.text else []
        if isinstance(event, ToolCallDelta):
            slot = self._args.setdefault(event.index, {"name": "", "arguments": ""})
            slot["name"] += event.name
            slot["arguments"] += event.arguments
        elif isinstance(event, Usage) and event.prompt_tokens is not None:
            prompt, output = event.prompt_tokens, event.completion_tokens or 0
            self.usage = {
                "prompt_tokens": prompt,
                "completion_tokens": output,
                "total_tokens": prompt + output,
            }
            if event.cached_tokens is not None:  # as the engine's own answer says it
                self.usage["prompt_tokens_details"] = {"cached_tokens": event.cached_tokens}
        return []

    def _content(self, text: str) -> dict[str, Any]:
        self.content.append(text)
        return self._chunk(self._opening({"content": text}))

    def _reasoning(self, text: str) -> dict[str, Any]:
        self.reasoning.append(text)
        return self._chunk(self._opening({"reasoning_content": text}))

    def _opening(self, delta: dict[str, Any]) -> dict[str, Any]:
        """The first delta names the role."""
        if not self.started:
            self.started = True
            return {"role": "assistant", **delta}
        return delta

    def closing(self) -> list[dict[str, Any]]:
        out = []
        self.calls = [
            {"name": slot["name"], "arguments": slot["arguments"]} for _, slot in sorted(self._args.items())
        ]
        if self.calls:
            delta = {"tool_calls": [self._call(i, c) for i, c in enumerate(self.calls)]}
            if not self.started:
                delta = {"role": "assistant", "content": None, **delta}
            out.append(self._chunk(delta))
        out.append(self._chunk({}, self._finish()))
        if self.include_usage and self.usage:
            out.append({**self._chunk({}), "choices": [], "usage": self.usage})
        return out

    def _finish(self) -> str:
        if self.calls:
            return "tool_calls"
        return "length" if self.tally.finish == "length" else "stop"

    def _call(self, index: int, call: dict[str, Any]) -> dict[str, Any]:
        return {
            "index": index,
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }

    def fold(self, chunks: list[dict[str, Any]]) -> dict[str, Any]:
        """The non-streamed answer, after :meth:`closing`."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = [self._call(i, c) for i, c in enumerate(self.calls)]
        elif message["content"] is None:
            message["content"] = ""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self._finish(), "logprobs": None}],
            "usage": self.usage or {},
        }

    frame = staticmethod(sse)

    def error(self, exc: EnginehouseError) -> bytes:
        return sse(openai_error_body(exc))
