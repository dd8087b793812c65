"""Rendering as Ollama does it: :func:`render` with named values, :func:`render_chat` from messages."""

from __future__ import annotations

from typing import Any

from enginehouse.api.gotemplate.execute import execute_nodes
from enginehouse.api.gotemplate.limits import MAX_OUTPUT_CHARS
from enginehouse.api.gotemplate.nodes import Action, If, Operand, Pipeline, Range, Template
from enginehouse.api.gotemplate.parser import parse
from enginehouse.api.gotemplate.values import GoStruct


def _as_dict(m: Any) -> Any:
    if hasattr(m, "model_dump"):
        return m.model_dump(exclude_none=True)
    return m


def _messages(messages: list[Any] | None) -> list[GoStruct]:
    return [GoStruct("Message", _as_dict(m)) for m in messages or []]


def _tools(tools: list[Any] | None) -> list[GoStruct]:
    return [GoStruct("Tool", _as_dict(t)) for t in tools or []]


_RESPONSE = Action(Pipeline([], False, [[Operand("field", names=("Response",))]], 0))


def _with_response(tmpl: Template) -> list[Any]:
    """Ollama appends ``{{ .Response }}`` to templates that use neither .Messages nor .Response."""
    if "messages" in tmpl.identifiers or "response" in tmpl.identifiers:
        return tmpl.nodes
    return [*tmpl.nodes, _RESPONSE]


def render(
    template: str,
    *,
    system: str | None = None,
    prompt: str | None = None,
    response: str | None = None,
    messages: list[Any] | None = None,
    tools: list[Any] | None = None,
    suffix: str | None = None,
    think: bool | None = None,
    max_output: int = MAX_OUTPUT_CHARS,
) -> str:
    """Execute an Ollama template with these values (unset strings are empty, as Ollama passes them)."""
    tmpl = parse(template)
    values: dict[str, Any] = {
        "System": system or "",
        "Prompt": prompt or "",
        "Response": response or "",
        "Suffix": suffix or "",
        "Messages": _messages(messages),
        "Tools": _tools(tools),
        "Think": bool(think),
        "IsThinkSet": think is not None,
    }
    return execute_nodes(tmpl, _with_response(tmpl), values, max_output)


def collate(messages: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's collate: all system contents joined, consecutive same-role messages merged."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        m = dict(_as_dict(m))
        role, content = m.get("role"), m.get("content") or ""
        if role == "system":
            system.append(content)
        if out and out[-1].get("role") == role and role != "tool":
            out[-1]["content"] = (out[-1].get("content") or "") + "\n\n" + content
        else:
            out.append(m)
    return "\n\n".join(system), out


def _cut_after_response(nodes: list[Any]) -> list[Any]:
    """Ollama's deleteNode: keep everything up to the first ``.Response`` field, drop what follows."""
    cut = False

    def pipe_walk(p: Pipeline) -> Pipeline | None:
        nonlocal cut
        cmds = []
        for cmd in p.cmds:
            args = []
            for a in cmd:
                if cut:
                    continue
                if a.kind == "field" and "Response" in a.names:
                    cut = True
                    args.append(a)
                elif a.kind == "pipe":
                    inner = pipe_walk(a.value)
                    if inner is not None:
                        args.append(Operand("pipe", inner, a.names))
                else:
                    args.append(a)
            if not args:
                return None
            cmds.append(args)
        return Pipeline(p.decl, p.assign, cmds, p.line) if cmds else None

    def walk(ns: list[Any]) -> list[Any]:
        out: list[Any] = []
        for n in ns:
            if cut:
                continue
            if isinstance(n, Action):
                p = pipe_walk(n.pipe)
                if p is not None:
                    out.append(Action(p))
            elif isinstance(n, If):
                branches = [(p, walk(b)) for p, b in n.branches]
                out.append(If(branches, walk(n.else_body) if n.else_body is not None else None, n.kind))
            elif isinstance(n, Range):
                body = walk(n.body)
                out.append(Range(n.pipe, body, walk(n.else_body) if n.else_body is not None else None))
            else:
                out.append(n)
        return out

    return walk(nodes)


def render_chat(
    template: str,
    messages: list[Any],
    *,
    tools: list[Any] | None = None,
    prompt: str | None = None,
    suffix: str | None = None,
    think: bool | None = None,
    max_output: int = MAX_OUTPUT_CHARS,
) -> str:
    """The prompt Ollama builds from ``messages`` with this template (its ``Template.Execute``)."""
    tmpl = parse(template)
    nodes = _with_response(tmpl)
    flags = {"Think": bool(think), "IsThinkSet": think is not None}
    if prompt and suffix:
        values = {"Prompt": prompt, "Suffix": suffix, "Response": "", **flags}
        return execute_nodes(tmpl, nodes, values, max_output)
    system, collated = collate(messages)
    if "messages" in tmpl.identifiers:
        values = {"System": system, "Messages": _messages(collated), "Tools": _tools(tools), "Response": ""}
        return execute_nodes(tmpl, nodes, {**values, **flags}, max_output)
    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def execute(ns: list[Any]) -> None:
        budget = max_output - sum(map(len, parts))
        parts.append(execute_nodes(tmpl, ns, {**turn, **flags}, budget))
        turn.update(System="", Prompt="", Response="")

    for m in collated:
        role, content = m.get("role"), m.get("content") or ""
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                execute(nodes)
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                execute(nodes)
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    execute(_cut_after_response(nodes))
    return "".join(parts)
