"""The OpenAI chat door for models with an Ollama (Go) template.

Such a model's prompt is rendered by the gateway, as on Ollama's door, so both doors and every engine
give the model the same prompt; the engine completes it raw (``/v1/completions``) and this module turns
the completion stream back into ``chat.completion`` chunks, with tool calls parsed as the template
writes them. Models with a GGUF (Jinja) template do not come here: llama-server renders those itself
and its stream is passed through untouched.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from enginehouse.api.convert import raw_json_schema
from enginehouse.api.gotemplate.render import render_chat
from enginehouse.api.toolcalls import (
    ToolCallSplitter,
    ToolFormat,
    entry_tool_choice,
    forcing_schema,
    tool_format,
)
from enginehouse.errors import InvalidRequest

# Fields that mean the same on /v1/chat/completions and /v1/completions.
_SHARED = (
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "top_k",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "repeat_last_n",
)


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts: only text reaches a text model
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def ollama_messages(messages: list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    """OpenAI messages as Ollama's templates see them (arguments as objects, tool results by name)."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, for the tool results
    for m in messages:
        role = "system" if m.get("role") == "developer" else m.get("role", "user")
        msg: dict[str, Any] = {"role": role, "content": _text(m.get("content"))}
        calls = []
        for c in m.get("tool_calls") or []:
            fn = c.get("function") or {}
            args = fn.get("arguments") or "{}"
            try:
                parsed = orjson.loads(args) if isinstance(args, str) else args
            except orjson.JSONDecodeError:
                raise InvalidRequest(f"tool call arguments are not JSON: {args[:80]!r}") from None
            names[c.get("id", "")] = fn.get("name", "")
            calls.append({"id": c.get("id"), "function": {"name": fn.get("name", ""), "arguments": parsed}})
        if calls:
            msg["tool_calls"] = calls
        if role == "tool":
            msg["tool_name"] = m.get("name") or names.get(m.get("tool_call_id", ""), "")
            if m.get("tool_call_id"):
                msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    if system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


def forced_tool(data: dict[str, Any]) -> tuple[bool, str | None]:
    """(whether a call is forced, the function it must be) from ``tool_choice``."""
    choice = data.get("tool_choice")
    if not data.get("tools") or choice in (None, "auto", "none"):
        return False, None
    if choice == "required":
        return True, None
    if isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        return True, choice["function"]["name"]
    raise InvalidRequest("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', ...}")


def completion_body(
    data: dict[str, Any], served_model: str, template: str, system: str | None, default_choice: str = "auto"
) -> tuple[dict[str, Any], ToolFormat | None, bool]:
    """The raw completion that stands for chat request ``data``; also the tool format and whether a
    call is forced (its prefix is then already in the prompt)."""
    if (data.get("n") or 1) > 1:
        raise InvalidRequest("n > 1 is not supported for models with an Ollama template; send n requests")
    tools = data.get("tools") if data.get("tool_choice") != "none" else None
    fmt = tool_format(template) if tools else None
    if tools and fmt is None:
        raise InvalidRequest("this model's template does not support tools")
    if tools and data.get("tool_choice") is None:
        last = data["messages"][-1].get("role") if data["messages"] else None
        data = {**data, "tool_choice": entry_tool_choice(default_choice, last)}
    forced, name = forced_tool(data) if tools else (False, None)
    if name is not None and not any((t.get("function") or {}).get("name") == name for t in tools or []):
        raise InvalidRequest(f"tool_choice names {name!r}, which is not in tools")
    prompt = render_chat(template, ollama_messages(data["messages"], system), tools=tools)
    body: dict[str, Any] = {"model": served_model, "prompt": prompt, "stream": True}
    body["stream_options"] = {"include_usage": True}
    body.update({k: data[k] for k in _SHARED if data.get(k) is not None})
    if data.get("logprobs"):
        body["logprobs"] = data.get("top_logprobs") or 1
    # llama-server's raw completions enforce a top-level json_schema (and ignore response_format).
    if forced and fmt is not None:
        body["prompt"] += fmt.prefix
        body["json_schema"] = forcing_schema(tools or [], fmt, name)
    elif schema := raw_json_schema(data.get("response_format")):
        body["json_schema"] = schema
    return body, fmt, forced


class ChatChunks:
    """Raw completion chunks in, ``chat.completion.chunk`` objects out (and the whole answer at the end
    for ``stream: false``)."""

    def __init__(self, model: str, fmt: ToolFormat | None, forced: bool, include_usage: bool) -> None:
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.splitter = ToolCallSplitter(fmt, forced) if fmt else None
        self.include_usage = include_usage
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.content: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.started = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or []:
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            text = choice.get("text") or ""
            if self.splitter is not None:
                text = self.splitter.feed(text)
            if text:
                out.append(self._content(text))
        return out

    def _content(self, text: str) -> dict[str, Any]:
        self.content.append(text)
        delta = {"content": text}
        if not self.started:
            self.started = True
            delta = {"role": "assistant", "content": text}
        return self._chunk(delta)

    def final(self) -> list[dict[str, Any]]:
        out = []
        if self.splitter is not None:
            rest, self.calls = self.splitter.finish()
            if rest:
                out.append(self._content(rest))
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
        return "length" if self.finish_reason == "length" else "stop"

    def _call(self, index: int, call: dict[str, Any]) -> dict[str, Any]:
        return {
            "index": index,
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call["name"], "arguments": orjson.dumps(call["arguments"]).decode()},
        }

    def completion(self) -> dict[str, Any]:
        """The non-streamed answer, after :meth:`final`."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
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
