"""OpenAI's Responses door (``/v1/responses``), request side: its bodies as chat calls.

Input items become chat messages: message items (roles user, assistant, system, developer; text parts
and ``input_image`` data URLs), ``function_call`` items (the assistant's calls), ``function_call_output``
items (the tool results) and ``reasoning`` items (the assistant's thinking). ``instructions`` is a system
message first. A follow-up (``previous_response_id``) is the stored conversation's items, then the new
input: the route reads the store, this module only converts.

The events side (the answer as a response object or its event stream) is
:mod:`enginehouse.api.responses_events`.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from enginehouse.api.responses_wire import ResponsesRequest
from enginehouse.api.structured import check_json_schema
from enginehouse.canonical import (
    ChatCall,
    Message,
    ToolCall,
)
from enginehouse.errors import InvalidRequest

TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
# reasoning.effort -> ChatCall.think: the engines know low/medium/high; "none" turns thinking off.
EFFORT = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}


def new_id(prefix: str) -> str:
    """OpenAI-looking ids (``resp_``, ``msg_``, ``fc_``...): 48 random hex digits, unguessable."""
    return f"{prefix}_{secrets.token_hex(24)}"


# ---- request -> call ----------------------------------------------------------------------------------
def input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's ``input`` as items: a string is one user message."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}] if value else []
    return list(value)


def with_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as they are stored and listed: each with an id (``msg_``, ``fc_``...) of its own."""
    prefixes = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
    out = []
    for item in items:
        kind = item.get("type", "message")
        out.append(item if item.get("id") else {"id": new_id(prefixes.get(kind, "item")), **item})
    return out


def _part_text(part: Any, where: str) -> tuple[str, str | None]:
    """(text, base64 image data) of one content part."""
    if not isinstance(part, dict):
        raise InvalidRequest(f"'{where}' must be an object", param=where)
    kind = part.get("type")
    if kind in TEXT_PARTS:
        return str(part.get("text") or ""), None
    if kind == "refusal":
        return str(part.get("refusal") or ""), None
    if kind == "input_image":
        url = part.get("image_url")
        if isinstance(url, dict):  # the Chat Completions spelling, accepted too
            url = url.get("url")
        if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
            raise InvalidRequest(
                f"'{where}.image_url' must be a data URL (data:image/png;base64,...): "
                "the gateway does not fetch URLs or files",
                param=f"{where}.image_url",
            )
        return "", url.split(",", 1)[1]
    raise InvalidRequest(f"'{where}.type' {kind!r} is not supported here", param=f"{where}.type")


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or a list of parts", param=where)
    texts, images = [], []
    for j, part in enumerate(content):
        text, image = _part_text(part, f"{where}[{j}]")
        texts.append(text)
        if image is not None:
            images.append(image)
    return "".join(texts), images


class _Conversation:
    """Items in, chat messages out: a call joins the assistant turn before it, a reasoning item waits
    for the assistant turn after it."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.names: dict[str, str] = {}  # call_id -> function name, for the tool results
        self.thinking: list[str] = []

    def _assistant(self) -> Message:
        last = self.messages[-1] if self.messages else None
        if last is None or last.role != "assistant":
            last = Message("assistant")
            self.messages.append(last)
        if self.thinking:
            last.thinking = (last.thinking or "") + "".join(self.thinking)
            self.thinking = []
        return last

    def add(self, items: list[dict[str, Any]], param: str) -> None:
        for i, item in enumerate(items):
            where = f"{param}[{i}]"
            if not isinstance(item, dict):
                raise InvalidRequest(f"'{where}' must be an object", param=where)
            kind = item.get("type", "message")
            if kind == "message":
                self._message(item, where)
            elif kind == "function_call":
                self._call(item, where)
            elif kind == "function_call_output":
                call_id = _string(item, "call_id", where)
                output, _ = _content(item.get("output"), f"{where}.output")
                msg = Message("tool", output, tool_call_id=call_id, tool_name=self.names.get(call_id, ""))
                self.messages.append(msg)
            elif kind == "reasoning":
                parts = item.get("content") or item.get("summary") or []
                self.thinking.append(_content(parts, f"{where}.summary")[0])
            elif kind == "item_reference":
                raise InvalidRequest(
                    f"'{where}': item references are not supported; send the item itself, or "
                    "previous_response_id",
                    param=f"{where}.type",
                )
            else:
                raise InvalidRequest(f"'{where}.type' {kind!r} is not supported here", param=f"{where}.type")

    def _message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequest(
                f"'{where}.role' must be one of 'user', 'assistant', 'system', 'developer'",
                param=f"{where}.role",
            )
        text, images = _content(item.get("content"), f"{where}.content")
        msg = Message("system" if role == "developer" else role, text, images)
        if role == "assistant" and self.thinking:
            msg.thinking, self.thinking = "".join(self.thinking), []
        self.messages.append(msg)

    def _call(self, item: dict[str, Any], where: str) -> None:
        name = _string(item, "name", where)
        call_id = _string(item, "call_id", where)
        args = item.get("arguments") or "{}"
        if not isinstance(args, str):
            raise InvalidRequest(f"'{where}.arguments' must be a JSON string", param=f"{where}.arguments")
        try:
            parsed = orjson.loads(args)
        except orjson.JSONDecodeError:
            raise InvalidRequest(
                f"'{where}.arguments' is not JSON: {args[:80]!r}", param=f"{where}.arguments"
            ) from None
        self.names[call_id] = name
        self._assistant().tool_calls.append(ToolCall(name, parsed, call_id))


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{where}.{key}' must be a non-empty string", param=f"{where}.{key}")
    return value


def messages_for(
    context: list[dict[str, Any]], items: list[dict[str, Any]], instructions: str | None
) -> list[Message]:
    """The chat a request is: its instructions (never the previous response's), the stored
    conversation, then its own input items."""
    conv = _Conversation()
    if instructions:
        conv.messages.append(Message("system", instructions))
    conv.add(context, "previous_response_id")
    conv.add(items, "input")
    if not any(m.role != "system" for m in conv.messages):
        raise InvalidRequest("'input' is empty: send a message or previous_response_id", param="input")
    return conv.messages


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses function tools ({type, name, description, parameters, strict}) as chat tools."""
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        kind = tool.get("type")
        if kind != "function":
            raise InvalidRequest(
                f"'{where}.type': only function tools are supported, not {kind!r} (built-in tools such as "
                "web_search or file_search are OpenAI's services, not a model's)",
                param=f"{where}.type",
            )
        name = _string(tool, "name", where)
        function: dict[str, Any] = {"name": name}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if tool.get("parameters") is not None:
            check_json_schema(tool["parameters"], f"{where}.parameters")
            function["parameters"] = tool["parameters"]
        if tool.get("strict") is not None:
            function["strict"] = bool(tool["strict"])
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return choice
    if choice == "required":
        if not tools:
            raise InvalidRequest("tool_choice 'required' needs tools", param="tool_choice")
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not any(t["function"]["name"] == name for t in tools or []):
            raise InvalidRequest(f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
        return {"type": "function", "function": {"name": name}}
    raise InvalidRequest(
        "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}",
        param="tool_choice",
    )


def response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` as the chat call's ``response_format`` (OpenAI's chat shape)."""
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        check_json_schema(schema, "text.format.schema")
        inner: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": schema}
        if fmt.get("strict") is not None:
            inner["strict"] = bool(fmt["strict"])
        return {"type": "json_schema", "json_schema": inner}
    raise InvalidRequest(
        "'text.format.type' must be one of 'text', 'json_object', 'json_schema'", param="text.format.type"
    )


def responses_call(req: ResponsesRequest, context: list[dict[str, Any]] | None = None) -> ChatCall:
    """A validated ``/v1/responses`` body, after ``context`` (the stored conversation it follows)."""
    tools = chat_tools(req.tools)
    sampling: dict[str, Any] = {}
    if req.max_output_tokens is not None:
        sampling["max_tokens"] = req.max_output_tokens
    if req.temperature is not None:
        sampling["temperature"] = req.temperature
    if req.top_p is not None:
        sampling["top_p"] = req.top_p
    effort = req.reasoning.effort if req.reasoning else None
    return ChatCall(
        model=req.model,
        messages=messages_for(context or [], input_items(req.input), req.instructions),
        tools=tools,
        tool_choice=chat_tool_choice(req.tool_choice, tools),
        sampling=sampling,
        response_format=response_format(req.text.format if req.text else None),
        think=EFFORT[effort] if effort else None,
        stream=bool(req.stream),
        include_usage=True,
    )


def echo(req: ResponsesRequest) -> dict[str, Any]:
    """The request fields a response object repeats, as OpenAI's does."""
    return {
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
        "store": req.store is not False,
        "temperature": req.temperature,
        "text": {"format": (req.text.format if req.text else None) or {"type": "text"}},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": req.tools or [],
        "top_p": req.top_p,
        "truncation": "disabled",
        "user": req.user,
        "background": False,
    }
