"""Canonical calls as OpenAI-compatible engine requests, and the engine's stream back as canonical events.

Every engine behind the gateway (llama-server, vLLM, an Ollama's ``/v1``, any OpenAI-compatible URL)
takes these requests, plus llama.cpp's sampling extensions, which vLLM accepts too. Bodies always ask
for a stream with usage: a client's ``stream: false`` is folded by its door, so one parser serves both.
"""

from __future__ import annotations

from typing import Any

import orjson

from enginehouse.canonical import (
    ChatCall,
    CompletionCall,
    Event,
    Failure,
    Finish,
    Message,
    ReasoningDelta,
    TextDelta,
    Think,
    ToolCallDelta,
    Usage,
)
from enginehouse.wire import DONE, SSEParser


def engine_message(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.role, "content": msg.content}
    if msg.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": msg.content}] if msg.content else []
        parts += [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}
            for image in msg.images
        ]
        out["content"] = parts
    if msg.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id or f"call_{i}",
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": c.arguments
                    if isinstance(c.arguments, str)
                    else orjson.dumps(c.arguments).decode(),
                },
            }
            for i, c in enumerate(msg.tool_calls)
        ]
    if msg.role == "tool":
        if msg.tool_name:
            out["name"] = msg.tool_name
        if msg.tool_call_id:
            out["tool_call_id"] = msg.tool_call_id
    if msg.thinking and msg.role == "assistant":
        out["reasoning_content"] = msg.thinking
    return out


def think_fields(think: Think) -> dict[str, Any]:
    """``think`` as the fields llama-server (and vLLM) read for a template they render themselves:
    the template's ``enable_thinking``, and a level as ``reasoning_effort`` (llama-server hands it to
    the template too)."""
    if think is None:
        return {}
    fields: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": bool(think)}}
    if isinstance(think, str):
        fields["reasoning_effort"] = think
    return fields


def _common(call: ChatCall | CompletionCall, served_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": served_model, "stream": True, "stream_options": {"include_usage": True}}
    body.update(call.sampling)
    return body


def chat_request(call: ChatCall, served_model: str) -> tuple[str, dict[str, Any]]:
    """(path, body) of a chat: the engine applies the model's own chat template."""
    messages = [engine_message(m) for m in call.messages]
    if call.system and not any(m.role == "system" for m in call.messages):
        messages.insert(0, {"role": "system", "content": call.system})
    body = _common(call, served_model)
    body["messages"] = messages
    if call.response_format:
        body["response_format"] = call.response_format
    if call.tools:
        body["tools"] = call.tools
        if call.tool_choice is not None:
            body["tool_choice"] = call.tool_choice
    if call.logprobs is not None:
        body["logprobs"] = True
        if call.logprobs:
            body["top_logprobs"] = call.logprobs
    body.update(think_fields(call.think))
    body.update(call.extra)
    return "/v1/chat/completions", body


def completion_request(call: CompletionCall, served_model: str) -> tuple[str, dict[str, Any]]:
    """(path, body) of a raw completion: the prompt is sent as it is."""
    body = _common(call, served_model)
    body["prompt"] = call.prompt
    if schema := raw_json_schema(call.response_format):
        body["json_schema"] = schema  # llama-server's raw completions enforce this, not response_format
    if call.logprobs is not None:
        body["logprobs"] = max(call.logprobs, 1)  # candidates per token, the sampled one at least
    body.update(call.extra)
    return "/v1/completions", body


def request_for(call: ChatCall | CompletionCall, served_model: str) -> tuple[str, dict[str, Any]]:
    if isinstance(call, ChatCall):
        return chat_request(call, served_model)
    return completion_request(call, served_model)


def raw_json_schema(response: dict[str, Any] | None) -> dict[str, Any] | None:
    """An OpenAI ``response_format`` as the top-level ``json_schema`` that llama-server's raw
    ``/v1/completions`` enforces (it ignores ``response_format`` there)."""
    if not response:
        return None
    if response.get("type") == "json_object":
        return {"type": "object"}
    if response.get("type") == "json_schema":
        return (response.get("json_schema") or {}).get("schema") or {"type": "object"}
    return None


def events_of(chunk: dict[str, Any]) -> list[Event]:
    """One parsed chat or completion chunk as events, in the order a client should see them."""
    if "error" in chunk:
        err = chunk["error"]
        return [Failure(str(err.get("message", err) if isinstance(err, dict) else err))]
    out: list[Event] = []
    choices = chunk.get("choices") or []
    if choices:
        choice = choices[0]
        delta = choice.get("delta")
        logprobs = (choice.get("logprobs") or {}).get("content") or None
        if delta is not None:  # a chat-completions chunk
            if thinking := delta.get("reasoning_content"):
                out.append(ReasoningDelta(thinking))
            if content := delta.get("content"):
                out.append(TextDelta(content, logprobs))
            for i, call in enumerate(delta.get("tool_calls") or []):
                fn = call.get("function") or {}
                index = call.get("index", i)
                out.append(
                    ToolCallDelta(index, fn.get("name") or "", fn.get("arguments") or "", call.get("id"))
                )
        elif text := choice.get("text"):  # a raw completions chunk
            out.append(TextDelta(text, logprobs))
        if reason := choice.get("finish_reason"):
            out.append(Finish(reason))
    usage, timings = chunk.get("usage"), chunk.get("timings")
    if usage:
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        out.append(
            Usage(
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", 0)),
                timings or {},
                int(cached) if isinstance(cached, int) else None,
            )
        )
    elif timings:
        out.append(Usage(timings=timings))
    return out


class EventDecoder:
    """An engine's SSE stream as events, one piece of bytes at a time, until ``[DONE]`` (then ``done``)."""

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.done = False

    def feed(self, chunk: bytes) -> list[Event]:
        out: list[Event] = []
        for payload in self._parser.feed(chunk):
            if payload == DONE:
                self.done = True
                break
            out += _events_in(payload)
        return out

    def end(self) -> list[Event]:
        """The last event of a stream that ended without its blank line (or without ``[DONE]``)."""
        if self.done:
            return []
        self.done = True
        return [event for payload in self._parser.close() if payload != DONE for event in _events_in(payload)]


def _events_in(payload: bytes) -> list[Event]:
    chunk = orjson.loads(payload)
    return events_of(chunk) if isinstance(chunk, dict) else []
