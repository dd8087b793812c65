"""What a model adds to a call before its engine sees it, the same for every door.

- its Modelfile PARAMETERs under the call's own sampling fields, and its SYSTEM where the call has none;
- for a model whose template is Ollama's Go syntax, the prompt rendered here exactly as Ollama would,
  so every door and every engine give the model the same prompt: the call becomes a raw completion,
  and the tool calls the template writes are split out of the answer's text (``api/toolcalls.py``);
  a forced call (``tool_choice`` "required" or named) has its opening in the prompt and the rest held
  to the tools' schema, so even a small model calls by construction;
- a chat with tools whose Go template cannot write a call goes to an engine that takes tools for any
  template (llama-server's ``--jinja`` generic format) rather than being refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from enginehouse.api.gotemplate import parse as parse_template
from enginehouse.api.gotemplate import render, render_chat
from enginehouse.api.ollama_door import with_defaults
from enginehouse.api.toolcalls import ToolFormat, entry_tool_choice, forcing_schema, tool_format
from enginehouse.canonical import ChatCall, CompletionCall, Message
from enginehouse.errors import InvalidRequest


@dataclass(frozen=True)
class ModelFacts:
    """What the gateway knows of the model that answers (its store record and its config entry)."""

    params: dict[str, Any]  # Modelfile PARAMETERs, Ollama's names
    system: str | None = None
    template: str | None = None  # Go or Jinja; only a Go template is rendered here
    engine_tools: bool = True  # its engine takes tools whatever the template says
    tool_choice: str = "auto"  # the entry's default for calls that set none (auto, required, user-turn)


@dataclass(frozen=True)
class Prepared:
    call: ChatCall | CompletionCall
    tools: ToolFormat | None = None  # split calls written this way out of the answer's text
    forced: bool = False  # a call's opening is already in the prompt


def is_jinja(template: str) -> bool:
    """GGUF chat templates are Jinja; Ollama's TEMPLATE layers are Go templates."""
    return "{%" in template


def go_template(template: str | None) -> str | None:
    return template if template and not is_jinja(template) else None


def gateway_template(template: str | None, tools: bool, engine_tools: bool) -> str | None:
    """The Go template the gateway renders a chat with, or None when the engine renders it itself."""
    template = go_template(template)
    if template and tools and engine_tools and tool_format(template) is None:
        return None
    return template


def renders(call: ChatCall, facts: ModelFacts) -> bool:
    """Whether this chat is rendered by the gateway (else the engine applies its own template)."""
    tools = bool(call.tools) and call.tool_choice != "none"
    return gateway_template(facts.template, tools, facts.engine_tools) is not None


def template_messages(messages: list[Message], system: str | None) -> list[dict[str, Any]]:
    """Messages as Ollama's templates see them (arguments as objects, tool results by name)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.images:
            msg["images"] = m.images
        if m.tool_calls:
            msg["tool_calls"] = [
                {**({"id": c.id} if c.id else {}), "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        if m.tool_name:
            msg["tool_name"] = m.tool_name
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        if m.thinking:
            msg["thinking"] = m.thinking
        out.append(msg)
    if system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


def _forced(tools: list[dict[str, Any]], choice: Any) -> tuple[bool, str | None]:
    """(whether a call is forced, the function it must be) from ``tool_choice``."""
    if choice in (None, "auto", "none"):
        return False, None
    if choice == "required":
        return True, None
    if isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        name = choice["function"]["name"]
        if not any((t.get("function") or {}).get("name") == name for t in tools):
            raise InvalidRequest(f"tool_choice names {name!r}, which is not in tools")
        return True, name
    raise InvalidRequest("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', ...}")


def prepare_chat(call: ChatCall, facts: ModelFacts) -> Prepared:
    sampling = with_defaults(call.sampling, facts.params)
    tools = call.tools if call.tool_choice != "none" else None
    template = gateway_template(facts.template, bool(tools), facts.engine_tools)
    if template is None:
        return Prepared(replace(call, sampling=sampling, system=call.system or facts.system))
    if call.n > 1:
        raise InvalidRequest("n > 1 is not supported for models with an Ollama template; send n requests")
    fmt = tool_format(template) if tools else None
    choice = call.tool_choice
    if tools and choice is None:
        last = call.messages[-1].role if call.messages else None
        choice = entry_tool_choice(facts.tool_choice, last)
    forced, name = _forced(tools or [], choice) if tools else (False, None)
    if tools and fmt is None and (forced or call.tool_choice is not None):
        raise InvalidRequest("this model's template does not support tools")
    think = call.think if call.think is None else bool(call.think)
    prompt = render_chat(template, template_messages(call.messages, facts.system), tools=tools, think=think)
    response_format = call.response_format
    if forced and fmt is not None:
        prompt += fmt.prefix
        schema = forcing_schema(call.tools or [], fmt, name)
        response_format = {"type": "json_schema", "json_schema": {"schema": schema}}
    completion = CompletionCall(
        model=call.model,
        sampling=sampling,
        response_format=response_format,
        logprobs=call.logprobs,
        stream=call.stream,
        include_usage=call.include_usage,
        num_ctx=call.num_ctx,
        keep_alive=call.keep_alive,
        prompt=prompt,
    )
    return Prepared(completion, fmt, forced and fmt is not None)


def prepare_completion(call: CompletionCall, facts: ModelFacts) -> Prepared:
    """A raw prompt is sent as it is; a user turn goes through the request's or the model's Go
    template, rendered here, or, for a Jinja template, through the engine's as a one-turn chat."""
    sampling = with_defaults(call.sampling, facts.params)
    if call.raw:
        return Prepared(replace(call, sampling=sampling))
    template = call.template or go_template(facts.template)
    if template:
        parse_template(template)
        prompt = render(
            template, system=call.system or facts.system or "", prompt=call.prompt, suffix=call.suffix
        )
        return Prepared(replace(call, sampling=sampling, prompt=prompt, raw=True, template=None, system=None))
    messages = [Message("system", call.system or facts.system or "")] if call.system or facts.system else []
    messages.append(Message("user", call.prompt, list(call.images)))
    chat = ChatCall(
        model=call.model,
        sampling=sampling,
        response_format=call.response_format,
        logprobs=call.logprobs,
        think=call.think,
        stream=call.stream,
        include_usage=call.include_usage,
        num_ctx=call.num_ctx,
        keep_alive=call.keep_alive,
        messages=messages,
    )
    return Prepared(chat)
