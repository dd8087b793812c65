"""Tool calls for models whose chat template is Ollama's Go syntax: how the template writes a call, how
to find calls in the model's output, and how to force one.

The format is learned from the template itself, not from a list of known models: the template renders
one assistant turn with plain content and one with a sentinel tool call; what differs is the call's
wrapper. Qwen and Hermes templates give ``<tool_call>\\n`` ... ``\\n</tool_call>``, Mistral's
``[TOOL_CALLS]``, Llama 3.1's a bare ``{"name": ..., "parameters": ...}``. (Jinja templates of GGUF files
are llama-server's business: its own parser handles those.)

Forcing a call (OpenAI ``tool_choice`` "required" or a named function) needs no trust in a small model:
the prefix is appended to the prompt and the rest is constrained by a JSON schema, which llama-server
turns into a grammar. The output is then a call by construction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from enginehouse.api.gotemplate import TemplateError
from enginehouse.api.gotemplate.render import render_chat
from enginehouse.canonical import Event, Finish, TextDelta, ToolCallDelta

_NAME = "zq_sentinel_fn"
_ARG = "zq_sentinel_arg"
_TEXT = "zq sentinel text"


@dataclass(frozen=True)
class ToolFormat:
    prefix: str  # what opens a call in the output ("" when calls are bare JSON)
    suffix: str  # what closes it
    arguments_key: str  # "arguments", or "parameters" (Llama 3.1)

    @property
    def marker(self) -> str:
        """The prefix without its blanks: models often drop the template's newlines."""
        return self.prefix.strip()


@lru_cache(maxsize=64)
def tool_format(template: str) -> ToolFormat | None:
    """How ``template`` writes a tool call, or None when it cannot write one."""
    if "ToolCalls" not in template:
        return None
    user = {"role": "user", "content": "hi"}
    call = {"function": {"name": _NAME, "arguments": {_ARG: 1}}}
    try:
        plain = render_chat(template, [user, {"role": "assistant", "content": _TEXT}])
        called = render_chat(template, [user, {"role": "assistant", "content": "", "tool_calls": [call]}])
    except TemplateError:
        return None
    head = _common_prefix(plain, called)
    tail = len(_common_prefix(plain[::-1], called[::-1]))
    middle = called[len(head) : len(called) - tail]
    at = middle.find(_NAME)
    start = middle.rfind("{", 0, at)
    if at < 0 or start < 0:
        return None
    try:
        obj, end = json.JSONDecoder().raw_decode(middle, start)
    except ValueError:
        return None
    keys = [k for k, v in obj.items() if isinstance(v, dict) and _ARG in v] if isinstance(obj, dict) else []
    prefix, suffix = middle[:start].lstrip(), middle[end:].rstrip()
    if prefix.rstrip().endswith("[") and suffix.lstrip().startswith("]"):  # a JSON list of calls
        prefix, suffix = prefix.rstrip()[:-1], suffix.lstrip()[1:]
    return ToolFormat(prefix, suffix, keys[0] if keys else "arguments")


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


def parse_calls(text: str, fmt: ToolFormat) -> tuple[str, list[dict[str, Any]]]:
    """Split the model's output into content and tool calls ({"name", "arguments"}). Output that does
    not parse as calls is all content: a model that talks about a tool has not called it."""
    if fmt.marker:
        at = text.find(fmt.marker)
        if at < 0:
            return text, []
        content, rest = text[:at], text[at:]
    else:
        stripped = text.lstrip()
        if not stripped.startswith(("{", "[")):
            return text, []
        content, rest = "", stripped
    calls: list[dict[str, Any]] = []
    decoder, pos = json.JSONDecoder(), 0
    markers = tuple(m for m in (fmt.marker, fmt.suffix.strip(), ",", ";") if m)
    while pos < len(rest):
        while pos < len(rest) and (rest[pos].isspace() or rest.startswith(markers, pos)):
            pos += next((len(m) for m in markers if rest.startswith(m, pos)), 1)
        if pos >= len(rest):
            break
        try:
            value, pos = decoder.raw_decode(rest, pos)
        except ValueError:
            return (text, []) if not calls else (content, calls)
        for obj in value if isinstance(value, list) else [value]:
            call = _as_call(obj, fmt.arguments_key)
            if call is None:
                return text, []
            calls.append(call)
    return (content, calls) if calls else (text, [])


def _as_call(obj: Any, arguments_key: str) -> dict[str, Any] | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(arguments_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return {"name": obj["name"], "arguments": args if isinstance(args, dict) else {}}


class ToolCallSplitter:
    """Streams content through until a call may be starting, then holds the rest for :func:`parse_calls`.

    Text that might be the beginning of the prefix is held back (a prefix can straddle two chunks), so a
    client never sees half of ``<tool_call>`` as content.
    """

    def __init__(self, fmt: ToolFormat, forced: bool = False) -> None:
        self.fmt = fmt
        self.held = fmt.prefix if forced else ""  # a forced call's prefix is in the prompt, not the output
        self.holding = forced
        self.sent = ""

    def feed(self, text: str) -> str:
        """Content to send now."""
        if self.holding:
            self.held += text
            return ""
        pending = self.held + text
        prefix = self.fmt.marker
        if prefix:
            at = pending.find(prefix)
            if at >= 0:
                self.holding, self.held = True, pending[at:]
                return self._send(pending[:at])
            most = min(len(prefix) - 1, len(pending))
            keep = next((k for k in range(most, 0, -1) if prefix.startswith(pending[-k:])), 0)
            self.held = pending[len(pending) - keep :]
            return self._send(pending[: len(pending) - keep])
        if not (self.sent + pending).strip():
            self.held = pending  # leading blanks: wait for the first real character
            return ""
        if not self.sent.strip() and pending.lstrip().startswith(("{", "[")):
            self.holding, self.held = True, pending
            return ""
        self.held = ""
        return self._send(pending)

    def _send(self, text: str) -> str:
        self.sent += text
        return text

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """Content still to send, and the calls found."""
        if not self.holding:
            return self.held, []
        return parse_calls(self.held, self.fmt)


def entry_tool_choice(setting: str, last_role: str | None) -> str:
    """A model entry's default ``tool_choice`` for a request that sets none: "required" always forces
    a call; "user-turn" forces one only right after a user message, so a small model that would never
    call a tool on its own still does, and still answers once the tool's result is in."""
    if setting == "required" or (setting == "user-turn" and last_role == "user"):
        return "required"
    return "auto"


def forcing_schema(tools: list[dict[str, Any]], fmt: ToolFormat, name: str | None = None) -> dict[str, Any]:
    """A JSON schema whose every instance is a call of one of ``tools`` (or of ``name`` only)."""
    options = []
    for tool in tools:
        fn = tool.get("function") or {}
        if name is not None and fn.get("name") != name:
            continue
        params = fn.get("parameters") or {"type": "object"}
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn.get("name", "")}, fmt.arguments_key: params},
                "required": ["name", fmt.arguments_key],
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}


class ToolCallStep:
    """A :class:`~enginehouse.canonical.Step`: text through :class:`ToolCallSplitter`, the calls found sent
    as whole :class:`~enginehouse.canonical.ToolCallDelta` events before the finish."""

    done = False

    def __init__(self, fmt: ToolFormat, forced: bool) -> None:
        self.splitter = ToolCallSplitter(fmt, forced)
        self.flushed = False

    def feed(self, event: Event) -> list[Event]:
        if isinstance(event, TextDelta):
            text = self.splitter.feed(event.text)
            return [TextDelta(text, event.logprobs)] if text else []
        if isinstance(event, Finish):
            return [*self.end(), event]
        return [event]

    def end(self) -> list[Event]:
        if self.flushed:
            return []
        self.flushed = True
        rest, calls = self.splitter.finish()
        out: list[Event] = [TextDelta(rest)] if rest else []
        out += [
            ToolCallDelta(i, call["name"], orjson.dumps(call["arguments"]).decode())
            for i, call in enumerate(calls)
        ]
        return out
