"""Anthropic's door: Messages requests as canonical chat calls, and canonical events as Anthropic's
message object or its named SSE events.

Pure functions, a transform and one small stateful encoder, tested with tables
(tests/test_anthropic_door.py). Anthropic's shapes become the canonical (OpenAI) ones here, once:
content blocks -> messages (a user turn's ``tool_result`` blocks -> tool messages), ``tools`` ->
function tools, ``tool_choice`` any -> required, ``thinking`` -> ``think``.

Stop sequences are matched here (:class:`StopStep`) rather than by the engine: Anthropic's answer names
the sequence that stopped it (``stop_sequence``), which no engine's OpenAI stream reports.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from enginehouse.api.anthropic import CountTokensRequest, MessagesRequest
from enginehouse.api.structured import check_json_schema
from enginehouse.canonical import (
    ChatCall,
    Event,
    Finish,
    Message,
    ReasoningDelta,
    Tally,
    TextDelta,
    Think,
    ToolCall,
    ToolCallDelta,
)
from enginehouse.errors import EnginehouseError, InvalidRequest, anthropic_error_body
from enginehouse.wire import sse

#: Block types a turn may carry besides text (the rest are Anthropic's server-side features).
_USER_BLOCKS = frozenset({"text", "image", "tool_result"})
_ASSISTANT_BLOCKS = frozenset({"text", "thinking", "redacted_thinking", "tool_use"})


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _block_text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"'{where}.text' must be a string", param=f"{where}.text")
    return text


def _image(block: dict[str, Any], where: str) -> str:
    """The base64 data of an image block; a URL source is refused (the gateway fetches nothing)."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"'{where}.source' must be an object", param=f"{where}.source")
    kind = source.get("type")
    if kind == "base64" and isinstance(source.get("data"), str):
        return source["data"]
    if kind == "url":
        raise InvalidRequest(
            f"'{where}.source': image URLs are not supported; send the image as base64",
            param=f"{where}.source.type",
        )
    raise InvalidRequest(
        f"'{where}.source' must be {{'type': 'base64', 'media_type', 'data'}}", param=f"{where}.source"
    )


def _unsupported(kind: Any, where: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{where}.type': content block type {kind!r} is not supported", param=f"{where}.type"
    )


def system_text(system: str | list[dict[str, Any]], where: str = "system") -> str:
    """A system prompt given as a string or as text blocks (joined by newlines)."""
    parts = []
    for i, block in enumerate(_blocks(system)):
        at = f"{where}[{i}]" if isinstance(system, list) else where
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _unsupported(block.get("type") if isinstance(block, dict) else block, at)
        parts.append(_block_text(block, at))
    return "\n".join(parts)


def _tool_result(block: dict[str, Any], where: str, names: dict[str, str]) -> Message:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise InvalidRequest(f"'{where}.tool_use_id' must be a string", param=f"{where}.tool_use_id")
    content = block.get("content", "")
    texts, images = [], []
    for j, part in enumerate(_blocks(content) if isinstance(content, str | list) else []):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(_block_text(part, at))
        elif kind == "image":
            images.append(_image(part, at))
        else:
            raise _unsupported(kind, at)
    return Message("tool", "\n".join(texts), images, tool_call_id=call_id, tool_name=names.get(call_id, ""))


def _user_turn(content: str | list[dict[str, Any]], where: str, names: dict[str, str]) -> list[Message]:
    """One user turn: its text and images as a user message, each ``tool_result`` as a tool message,
    in the order given (agents put the results first)."""
    out: list[Message] = []
    texts: list[str] = []
    images: list[str] = []

    def flush() -> None:
        if texts or images:
            out.append(Message("user", "\n".join(texts), list(images)))
            texts.clear()
            images.clear()

    for i, block in enumerate(_blocks(content)):
        at = f"{where}[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in _USER_BLOCKS:
            raise _unsupported(kind, at)
        if kind == "text":
            texts.append(_block_text(block, at))
        elif kind == "image":
            images.append(_image(block, at))
        else:
            flush()
            out.append(_tool_result(block, at, names))
    flush()
    return out or [Message("user", "")]


def _assistant_turn(content: str | list[dict[str, Any]], where: str, names: dict[str, str]) -> Message:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    for i, block in enumerate(_blocks(content)):
        at = f"{where}[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in _ASSISTANT_BLOCKS:
            raise _unsupported(kind, at)
        if kind == "text":
            texts.append(_block_text(block, at))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif kind == "tool_use":
            name, call_id, args = block.get("name"), block.get("id"), block.get("input", {})
            if not isinstance(name, str) or not isinstance(call_id, str) or not isinstance(args, dict):
                raise InvalidRequest(
                    f"'{at}' must have 'id' and 'name' strings and an 'input' object", param=at
                )
            names[call_id] = name
            calls.append(ToolCall(name, args, call_id))
    return Message("assistant", "\n".join(texts), tool_calls=calls, thinking="".join(thinking) or None)


def messages_of(req: CountTokensRequest) -> list[Message]:
    names: dict[str, str] = {}  # tool_use id -> tool name, for the results that answer them
    out = [Message("system", system_text(req.system))] if req.system else []
    for i, m in enumerate(req.messages):
        where = f"messages[{i}].content"
        if m.role == "system":
            out.append(Message("system", system_text(m.content, where)))
        elif m.role == "assistant":
            out.append(_assistant_turn(m.content, where, names))
        else:
            out += _user_turn(m.content, where, names)
    return out


def tools_of(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Anthropic's custom tools as OpenAI function tools, each schema checked like the other doors'."""
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if tool.get("type") not in (None, "custom"):
            raise InvalidRequest(
                f"'{where}.type': tool type {tool['type']!r} is not supported; "
                "only custom tools (name, description, input_schema) are",
                param=f"{where}.type",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"'{where}.name' must be a non-empty string", param=f"{where}.name")
        if "input_schema" not in tool:
            raise InvalidRequest(f"'{where}.input_schema' is required", param=f"{where}.input_schema")
        check_json_schema(tool["input_schema"], f"{where}.input_schema")
        function = {"name": name, "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def tool_choice_of(choice: dict[str, Any] | None) -> str | dict[str, Any] | None:
    """auto -> auto, any -> required, tool -> the named function, none -> none."""
    if choice is None:
        return None
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("'tool_choice.name' must be a non-empty string", param="tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    raise InvalidRequest(
        "'tool_choice.type' must be one of 'auto', 'any', 'tool', 'none'", param="tool_choice.type"
    )


def response_format_of(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """``output_config.format`` (a JSON schema the answer must follow) as OpenAI's ``response_format``;
    the engine enforces it with a grammar, so the schema is checked like the other doors' first."""
    fmt = (config or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise InvalidRequest(
            "'output_config.format.type' must be 'json_schema'", param="output_config.format.type"
        )
    check_json_schema(fmt.get("schema"), "output_config.format.schema")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def think_of(thinking: dict[str, Any] | None) -> Think:
    """enabled (adaptive, between_tools) -> on, disabled -> off; ``budget_tokens`` is checked, not
    enforced."""
    if thinking is None:
        return None
    kind = thinking.get("type")
    if kind == "disabled":
        return False
    if kind in ("enabled", "adaptive", "between_tools"):
        budget = thinking.get("budget_tokens")
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 0):
            raise InvalidRequest(
                "'thinking.budget_tokens' must be a whole number", param="thinking.budget_tokens"
            )
        return True
    raise InvalidRequest("'thinking.type' must be 'enabled' or 'disabled'", param="thinking.type")


def messages_call(req: CountTokensRequest) -> ChatCall:
    """A validated Messages (or count_tokens) body as a chat call. Stop sequences stay out of the
    sampling: the door matches them (:class:`StopStep`)."""
    sampling: dict[str, Any] = {}
    stream = False
    response_format = None
    if isinstance(req, MessagesRequest):
        sampling["max_tokens"] = req.max_tokens
        for name in ("temperature", "top_p", "top_k"):
            if (value := getattr(req, name)) is not None:
                sampling[name] = value
        stream = bool(req.stream)
        response_format = response_format_of(req.output_config)
    tools = tools_of(req.tools)
    return ChatCall(
        model=req.model,
        messages=messages_of(req),
        tools=tools,
        tool_choice=tool_choice_of(req.tool_choice) if tools else None,
        sampling=sampling,
        response_format=response_format,
        think=think_of(req.thinking),
        stream=stream,
    )


# ---- stop sequences -----------------------------------------------------------------------------------
def _first_stop(text: str, sequences: list[str]) -> tuple[int, str] | None:
    found = [(at, s) for s in sequences if (at := text.find(s)) >= 0]
    return min(found, key=lambda f: (f[0], -len(f[1]))) if found else None


def _partial_tail(text: str, sequences: list[str], longest: int) -> int:
    """How many characters at the end of ``text`` could begin a stop sequence (held back until the
    next piece says)."""
    for k in range(min(len(text), longest - 1), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in sequences):
            return k
    return 0


class StopStep:
    """A :class:`~enginehouse.canonical.Step`: the text up to the first stop sequence, then a
    :class:`Finish` naming it, and the end (the relay then closes the engine's stream, which stops the
    generation). Text that may begin a sequence is held back until the next piece decides."""

    def __init__(self, sequences: list[str]) -> None:
        self.sequences = sequences
        self.longest = max(map(len, sequences), default=0)
        self.held = ""
        self.done = False

    def feed(self, event: Event) -> list[Event]:
        if self.done:
            return []
        if not isinstance(event, TextDelta):
            return [*self.end(), event]
        text = self.held + event.text
        if hit := _first_stop(text, self.sequences):
            at, sequence = hit
            self.done, self.held = True, ""
            return [TextDelta(text[:at]), Finish("stop", sequence)] if at else [Finish("stop", sequence)]
        keep = _partial_tail(text, self.sequences, self.longest)
        self.held = text[len(text) - keep :]
        return [TextDelta(text[: len(text) - keep])] if len(text) > keep else []

    def end(self) -> list[Event]:
        held, self.held = self.held, ""
        return [TextDelta(held)] if held and not self.done else []


# ---- the answer ---------------------------------------------------------------------------------------
def _input_of(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as the ``input`` object (empty when the model's JSON was cut short)."""
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class AnthropicEncoder:
    """Canonical events in, Anthropic's stream events out (``message_start``, ``ping``, one
    ``content_block_start``/``_delta``/``_stop`` run per block, ``message_delta``, ``message_stop``),
    and the whole message object for ``stream: false``. ``frame`` names each SSE event by its type."""

    content_type = "text/event-stream"
    closing_bytes = b""

    def __init__(self, model: str, started: float) -> None:
        self.model = model
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.tally = Tally(started)
        self.blocks: list[dict[str, Any]] = []  # the message's content blocks, each with its pieces
        self._open: int | None = None  # the index of the block being streamed
        self._tools: dict[int, int] = {}  # the engine's tool call index -> block index
        self.stop_sequence: str | None = None
        self.started = False

    def _message_start(self) -> list[dict[str, Any]]:
        if self.started:
            return []
        self.started = True
        usage = {"input_tokens": self.tally.prompt_tokens or 0, "output_tokens": 0}
        message = {**self._message([]), "stop_reason": None, "stop_sequence": None, "usage": usage}
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _message(self, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
        }

    def objects(self, event: Event) -> list[dict[str, Any]]:
        out = self._message_start()
        if isinstance(event, TextDelta):
            if event.text:
                out += self._piece("text", event.text)
        elif isinstance(event, ReasoningDelta):
            if event.text:
                out += self._piece("thinking", event.text)
        elif isinstance(event, ToolCallDelta):
            out += self._tool_piece(event)
        elif isinstance(event, Finish) and event.stop_sequence is not None:
            self.stop_sequence = event.stop_sequence
        return out

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [{"type": "content_block_stop", "index": index}]

    def _begin(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._close()
        self._open = len(self.blocks)
        self.blocks.append({**block, "pieces": []})
        return [*out, {"type": "content_block_start", "index": self._open, "content_block": block}]

    def _piece(self, kind: str, text: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self._open is None or self.blocks[self._open]["type"] != kind:
            start = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": ""}
            if kind == "thinking":
                start["signature"] = ""
            out = self._begin(start)
        index = self._open
        assert index is not None
        self.blocks[index]["pieces"].append(text)
        delta = (
            {"type": "text_delta", "text": text}
            if kind == "text"
            else {"type": "thinking_delta", "thinking": text}
        )
        out.append({"type": "content_block_delta", "index": index, "delta": delta})
        return out

    def _tool_piece(self, event: ToolCallDelta) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        index = self._tools.get(event.index)
        if index is None:
            call_id = event.id or f"toolu_{uuid.uuid4().hex[:24]}"
            out = self._begin({"type": "tool_use", "id": call_id, "name": event.name, "input": {}})
            index = self._tools[event.index] = len(self.blocks) - 1
        elif event.name:
            self.blocks[index]["name"] += event.name
        if event.arguments:
            self.blocks[index]["pieces"].append(event.arguments)
            delta = {"type": "input_json_delta", "partial_json": event.arguments}
            out.append({"type": "content_block_delta", "index": index, "delta": delta})
        return out

    def stop_reason(self) -> str:
        if self.stop_sequence is not None:
            return "stop_sequence"
        if self.tally.finish == "length":
            return "max_tokens"
        return "tool_use" if self._tools else "end_turn"

    def usage(self) -> dict[str, int]:
        """Anthropic's split of the prompt: the tokens the engine reused from its prompt cache
        (llama-server's ``cache_n``) are ``cache_read_input_tokens``, the rest ``input_tokens``; together
        they are the whole prompt, which ``count_tokens`` counts."""
        tally = self.tally
        _, _, output, _ = tally.counts(time.monotonic())
        cached = int(tally.timings.get("cache_n", 0))
        total = tally.prompt_tokens
        if total is None:
            total = int(tally.timings.get("prompt_n", 0)) + cached
        cached = min(cached, total)
        return {"input_tokens": total - cached, "cache_read_input_tokens": cached, "output_tokens": output}

    def closing(self) -> list[dict[str, Any]]:
        out = [*self._message_start(), *self._close()]
        delta = {"stop_reason": self.stop_reason(), "stop_sequence": self.stop_sequence}
        out.append({"type": "message_delta", "delta": delta, "usage": self.usage()})
        out.append({"type": "message_stop"})
        return out

    def fold(self, objects: list[dict[str, Any]]) -> dict[str, Any]:
        """The non-streamed message, after :meth:`closing`."""
        content = []
        for block in self.blocks:
            text = "".join(block["pieces"])
            if block["type"] == "text":
                content.append({"type": "text", "text": text})
            elif block["type"] == "thinking":
                content.append({"type": "thinking", "thinking": text, "signature": ""})
            else:
                content.append(
                    {"type": "tool_use", "id": block["id"], "name": block["name"], "input": _input_of(text)}
                )
        message = self._message(content)
        message.update(stop_reason=self.stop_reason(), stop_sequence=self.stop_sequence, usage=self.usage())
        return message

    @staticmethod
    def frame(obj: dict[str, Any]) -> bytes:
        return sse(obj, obj["type"])

    def error(self, exc: EnginehouseError) -> bytes:
        return sse(anthropic_error_body(exc), "error")
