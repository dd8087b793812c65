"""Execution of a parsed template over values, within the output and iteration limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from enginehouse.api.gotemplate.errors import TemplateError
from enginehouse.api.gotemplate.functions import compare, equal, go_index, go_print, go_slice, length
from enginehouse.api.gotemplate.limits import MAX_ITERATIONS
from enginehouse.api.gotemplate.nodes import Action, If, Loop, Operand, Pipeline, Range, Template, Text
from enginehouse.api.gotemplate.values import GoStruct, format_value, to_json, truthy


class Break(Exception):
    pass


class Continue(Exception):
    pass


class Executor:
    def __init__(self, root: dict[str, Any], max_output: int) -> None:
        self.root = root
        self.vars: list[tuple[str, Any]] = [("$", root)]
        self.out: list[str] = []
        self.size = 0
        self.max_output = max_output
        self.iterations = 0

    def emit(self, s: str) -> None:
        self.size += len(s)
        if self.size > self.max_output:
            raise TemplateError(f"output larger than {self.max_output} characters")
        self.out.append(s)

    def lookup(self, name: str, line: int) -> Any:
        for n, v in reversed(self.vars):
            if n == name:
                return v
        raise TemplateError(f'undefined variable "{name}"', line)

    def field(self, v: Any, names: tuple[str, ...], line: int) -> Any:
        for name in names:
            if isinstance(v, GoStruct):
                v = v.get(name, line)
            elif isinstance(v, dict):
                v = v.get(name)
            elif v is None:
                return None
            else:
                raise TemplateError(f"can't evaluate field {name} in type {type(v).__name__}", line)
        return v

    def operand(self, op: Operand, dot: Any, line: int) -> Any:
        if op.kind == "field":
            return self.field(dot, op.names, line)
        if op.kind == "var":
            return self.field(self.lookup(op.value, line), op.names, line)
        if op.kind == "dot":
            return dot
        if op.kind == "lit":
            return op.value
        if op.kind == "pipe":
            return self.field(self.pipeline(op.value, dot), op.names, line)
        if op.kind == "ident":
            return self.call(op.value, [], dot, line)
        raise TemplateError(f"unexpected operand {op.kind}", line)

    def call(self, name: str, args: list[Operand], dot: Any, line: int, final: Any = ...) -> Any:
        def values() -> Iterator[Any]:
            for a in args:
                yield self.operand(a, dot, line)
            if final is not ...:
                yield final

        if name in ("and", "or"):
            if not args and final is ...:
                raise TemplateError(f"wrong number of args for {name}: want at least 1 got 0", line)
            v: Any = None
            for v in values():
                if truthy(v) != (name == "and"):
                    return v
            return v
        vals = list(values())

        def want(n: int) -> None:
            if len(vals) != n:
                raise TemplateError(f"wrong number of args for {name}: want {n} got {len(vals)}", line)

        if name == "not":
            want(1)
            return not truthy(vals[0])
        if name in ("eq", "ne"):
            if len(vals) < 2 or (name == "ne" and len(vals) != 2):
                raise TemplateError(f"wrong number of args for {name}", line)
            hit = any(equal(vals[0], b, line) for b in vals[1:])
            return hit if name == "eq" else not hit
        if name in ("lt", "le", "gt", "ge"):
            want(2)
            c = compare(vals[0], vals[1], line)
            return {"lt": c < 0, "le": c <= 0, "gt": c > 0, "ge": c >= 0}[name]
        if name == "len":
            want(1)
            return length(vals[0], line)
        if name == "index":
            if not vals:
                raise TemplateError("wrong number of args for index", line)
            return go_index(vals[0], vals[1:], line)
        if name == "slice":
            if not vals:
                raise TemplateError("wrong number of args for slice", line)
            return go_slice(vals[0], vals[1:], line)
        if name == "print":
            return go_print(vals)
        if name == "json":
            want(1)
            try:
                return to_json(vals[0])
            except (TypeError, ValueError) as e:
                raise TemplateError(f"json: {e}", line) from None
        raise TemplateError(f'function "{name}" is not supported', line)

    def pipeline(self, pipe: Pipeline, dot: Any) -> Any:
        value: Any = ...
        for cmd in pipe.cmds:
            first = cmd[0]
            if first.kind == "ident":
                value = self.call(first.value, cmd[1:], dot, pipe.line, value)
            elif value is not ...:
                raise TemplateError("can't give an argument to a non-function", pipe.line)
            else:
                value = self.operand(first, dot, pipe.line)
        if pipe.decl:
            if pipe.assign:
                name = pipe.decl[0]
                for k in range(len(self.vars) - 1, -1, -1):
                    if self.vars[k][0] == name:
                        self.vars[k] = (name, value)
                        break
                else:
                    raise TemplateError(f'undefined variable "{name}"', pipe.line)
            else:
                self.vars.append((pipe.decl[0], value))
        return value

    def run(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, Text):
                self.emit(node.text)
            elif isinstance(node, Action):
                value = self.pipeline(node.pipe, dot)
                if not node.pipe.decl:
                    self.emit(format_value(value))
            elif isinstance(node, If):
                self.branch(node, dot)
            elif isinstance(node, Range):
                self.range(node, dot)
            elif isinstance(node, Loop):
                raise Break() if node.kind == "break" else Continue()

    def branch(self, node: If, dot: Any) -> None:
        mark = len(self.vars)
        try:
            for pipe, body in node.branches:
                value = self.pipeline(pipe, dot)
                if truthy(value):
                    self.run(body, value if node.kind == "with" else dot)
                    return
            if node.else_body is not None:
                self.run(node.else_body, dot)
        finally:
            del self.vars[mark:]

    def range(self, node: Range, dot: Any) -> None:
        mark = len(self.vars)
        pipe = node.pipe
        decl, pipe_no_decl = pipe.decl, Pipeline([], False, pipe.cmds, pipe.line)
        try:
            value = self.pipeline(pipe_no_decl, dot)
            items: Iterator[tuple[Any, Any]]
            if value is None:
                items = iter(())
            elif isinstance(value, list | tuple):
                items = iter(enumerate(value))
            elif isinstance(value, dict):
                items = ((k, value[k]) for k in sorted(value, key=str))
            elif isinstance(value, int) and not isinstance(value, bool):
                if len(decl) > 1:
                    raise TemplateError("can't use two variables when ranging over an integer", pipe.line)
                items = ((i, i) for i in range(max(value, 0)))
            else:
                raise TemplateError(f"range can't iterate over {format_value(value)[:40]!r}", pipe.line)
            ran = False
            for key, elem in items:
                ran = True
                self.iterations += 1
                if self.iterations > MAX_ITERATIONS:
                    raise TemplateError(f"more than {MAX_ITERATIONS} loop iterations", pipe.line)
                del self.vars[mark:]
                if len(decl) == 2:
                    self.vars += [(decl[0], key), (decl[1], elem)]
                elif len(decl) == 1:
                    self.vars.append((decl[0], elem))
                try:
                    self.run(node.body, elem)
                except Continue:
                    continue
                except Break:
                    break
            if not ran and node.else_body is not None:
                del self.vars[mark:]
                self.run(node.else_body, dot)
        finally:
            del self.vars[mark:]


def execute_nodes(tmpl: Template, nodes: list[Any], values: dict[str, Any], max_output: int) -> str:
    ex = Executor(values, max_output)
    try:
        ex.run(nodes, values)
    except (Break, Continue):  # pragma: no cover - the parser only allows them inside range
        raise TemplateError("break or continue outside range") from None
    except RecursionError:  # deeply nested data (tool arguments), as nesting is bounded at parse time
        raise TemplateError("values nested too deeply") from None
    return "".join(ex.out)
