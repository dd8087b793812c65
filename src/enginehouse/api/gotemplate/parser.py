"""The parser: template text to a tree of nodes, refusing anything unsupported by name."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from enginehouse.api.gotemplate.errors import TemplateError
from enginehouse.api.gotemplate.lexer import SPACE, Tok, lex_action
from enginehouse.api.gotemplate.limits import MAX_DEPTH, MAX_TEMPLATE_CHARS
from enginehouse.api.gotemplate.nodes import Action, If, Loop, Operand, Pipeline, Range, Template, Text

FUNCTIONS = frozenset(
    {"and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len", "index", "slice", "print", "json"}
)
UNSUPPORTED = {
    "define": "{{define}}",
    "template": "{{template}}",
    "block": "{{block}}",
    "printf": "the printf function",
    "println": "the println function",
    "call": "the call function",
    "html": "the html function",
    "js": "the js function",
    "urlquery": "the urlquery function",
}


@dataclass
class _Frame:
    kind: str  # root if with range
    node: Any
    body: list[Any]
    line: int
    scope_mark: int  # variables to drop at {{end}}
    body_mark: int = 0  # variables to drop at {{else}} (those declared in the body)


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.scope: list[str] = ["$"]
        self.identifiers: set[str] = set()
        self.parens = 0

    # -- pipelines --

    def check_var(self, name: str, line: int) -> None:
        if name not in self.scope:
            raise TemplateError(f'undefined variable "{name}"', line)

    def pipeline(self, toks: list[Tok], line: int, *, ctx: str, allow_two: bool = False) -> Pipeline:
        decl: list[str] = []
        assign = False
        # Declarations: $x := ..., $x = ..., and in range $i, $e := ...
        if toks and toks[0].kind == "var" and not toks[0].names:
            if len(toks) > 1 and toks[1].kind in (":=", "="):
                decl = [toks[0].value]
                assign = toks[1].kind == "="
                toks = toks[2:]
            elif allow_two and len(toks) > 3 and toks[1].kind == "," and toks[2].kind == "var":
                if toks[3].kind != ":=":
                    raise TemplateError("range can only declare variables with ':='", line)
                decl = [toks[0].value, toks[2].value]
                toks = toks[4:]
        if assign:
            self.check_var(decl[0], line)
        if not toks:
            raise TemplateError(f"missing value for {ctx}", line)
        pos = 0
        cmds: list[list[Operand]] = []
        pos, cmds = self._cmds(toks, pos, line)
        if pos != len(toks):
            raise TemplateError(f"unexpected {toks[pos].value!r} in {ctx}", line)
        if not assign:
            self.scope.extend(decl)
        return Pipeline(decl, assign, cmds, line)

    def _cmds(self, toks: list[Tok], pos: int, line: int) -> tuple[int, list[list[Operand]]]:
        cmds: list[list[Operand]] = []
        while True:
            cmd: list[Operand] = []
            while pos < len(toks) and toks[pos].kind not in ("|", ")"):
                operand, pos = self._operand(toks, pos, line)
                cmd.append(operand)
            if not cmd:
                raise TemplateError("missing command in pipeline", line)
            first = cmd[0]
            if first.kind == "lit" and first.value is None and len(cmd) == 1:
                raise TemplateError("nil is not a command", line)
            if first.kind != "ident" and len(cmd) > 1:
                raise TemplateError("arguments after a non-function (method calls are not supported)", line)
            cmds.append(cmd)
            if pos < len(toks) and toks[pos].kind == "|":
                pos += 1
                continue
            return pos, cmds

    def _operand(self, toks: list[Tok], pos: int, line: int) -> tuple[Operand, int]:
        t = toks[pos]
        pos += 1
        if t.kind == "field":
            self.identifiers.update(t.names)
            op = Operand("field", names=t.names)
        elif t.kind == "var":
            self.check_var(t.value, line)
            self.identifiers.add(t.value)
            self.identifiers.update(t.names)
            op = Operand("var", t.value, t.names)
        elif t.kind == "dot":
            op = Operand("dot")
        elif t.kind in ("str", "num", "bool", "nil"):
            op = Operand("lit", t.value)
        elif t.kind == "ident":
            name = t.value
            if name in UNSUPPORTED:
                raise TemplateError(f"{UNSUPPORTED[name]} is not supported", line)
            if name in ("if", "else", "end", "range", "with", "break", "continue"):
                raise TemplateError(f"unexpected keyword {name!r} inside an action", line)
            if name not in FUNCTIONS:
                raise TemplateError(f'function "{name}" is not supported', line)
            op = Operand("ident", name)
        elif t.kind == "(":
            self.parens += 1
            if self.parens > MAX_DEPTH:
                raise TemplateError(f"parentheses nested deeper than {MAX_DEPTH} levels", line)
            end, cmds = self._cmds(toks, pos, line)
            self.parens -= 1
            if end >= len(toks) or toks[end].kind != ")":
                raise TemplateError("unclosed left paren", line)
            op = Operand("pipe", Pipeline([], False, cmds, line))
            pos = end + 1
        else:
            raise TemplateError(f"unexpected {t.value!r} in operand", line)
        # A field chain written right after an operand applies to it: (x).Field, $x.A.B
        if pos < len(toks) and toks[pos].kind == "field" and toks[pos].adjacent:
            if op.kind in ("lit", "ident", "dot"):
                raise TemplateError(f"unexpected field access on {t.value!r}", line)
            self.identifiers.update(toks[pos].names)
            op.names = op.names + toks[pos].names
            pos += 1
        return op, pos

    # -- the tree --

    def parse(self) -> Template:
        src = self.src
        root: list[Any] = []
        stack: list[_Frame] = [_Frame("root", None, root, 1, 1)]
        pos = 0
        pending_trim = False
        n = len(src)
        line, counted = 1, 0
        while True:
            start = src.find("{{", pos)
            text = src[pos:] if start < 0 else src[pos:start]
            if pending_trim:
                text = text.lstrip(SPACE)
            if start < 0:
                if text:
                    stack[-1].body.append(Text(text))
                break
            line += src.count("\n", counted, start)
            counted = start
            j = start + 2
            if src.startswith("-", j) and j + 1 < n and src[j + 1] in SPACE:
                text = text.rstrip(SPACE)
                j += 2
            if text:
                stack[-1].body.append(Text(text))
            if src.startswith("/*", j):
                end = src.find("*/", j + 2)
                if end < 0:
                    raise TemplateError("unclosed comment", line)
                k = end + 2
                if k < n and src[k] in SPACE and src.startswith("-}}", k + 1):
                    pos, pending_trim = k + 4, True
                elif src.startswith("}}", k):
                    pos, pending_trim = k + 2, False
                else:
                    raise TemplateError("comment ends before closing delimiter", line)
                continue
            toks, pos, pending_trim = lex_action(src, j, line)
            self._action(toks, line, stack)
        if len(stack) > 1:
            raise TemplateError(
                f"unexpected EOF: {{{{{stack[-1].kind.removesuffix('-else')}}}}} has no {{{{end}}}}",
                stack[-1].line,
            )
        return Template(root, frozenset(i.lower() for i in self.identifiers))

    def _push(self, stack: list[_Frame], frame: _Frame) -> None:
        if len(stack) > MAX_DEPTH:
            raise TemplateError(f"nesting deeper than {MAX_DEPTH} levels", frame.line)
        stack.append(frame)

    def _action(self, toks: list[Tok], line: int, stack: list[_Frame]) -> None:
        if not toks:
            raise TemplateError("missing value for command", line)
        head = toks[0]
        word = head.value if head.kind == "ident" else None
        top = stack[-1]
        if word in ("if", "with"):
            mark = len(self.scope)
            pipe = self.pipeline(toks[1:], line, ctx=word)
            node = If([(pipe, [])], kind=word)
            top.body.append(node)
            self._push(stack, _Frame(word, node, node.branches[0][1], line, mark, len(self.scope)))
        elif word == "range":
            mark = len(self.scope)
            pipe = self.pipeline(toks[1:], line, ctx="range", allow_two=True)
            if pipe.assign:
                raise TemplateError("range can only declare variables with ':='", line)
            node = Range(pipe, [])
            top.body.append(node)
            self._push(stack, _Frame("range", node, node.body, line, mark, len(self.scope)))
        elif word == "else":
            if top.kind not in ("if", "with", "range"):
                raise TemplateError("unexpected {{else}}", line)
            rest = toks[1:]
            if top.kind == "range" or not rest:
                if rest:
                    raise TemplateError("unexpected tokens after {{else}} in {{range}}", line)
                if top.node.else_body is not None:
                    raise TemplateError("more than one {{else}}", line)
                # Range variables end with the loop body; an if's pipeline variables live on.
                del self.scope[top.scope_mark if top.kind == "range" else top.body_mark :]
                top.node.else_body = []
                top.body = top.node.else_body
                top.kind += "-else"
                return
            kw = rest[0].value if rest[0].kind == "ident" else None
            if kw != top.kind:
                raise TemplateError(f"{{{{else {kw or '...'}}}}} inside {{{{{top.kind}}}}}", line)
            del self.scope[top.body_mark :]
            pipe = self.pipeline(rest[1:], line, ctx=kw)
            top.body_mark = len(self.scope)
            body: list[Any] = []
            top.node.branches.append((pipe, body))
            top.body = body
        elif word == "end":
            if len(toks) > 1:
                raise TemplateError("unexpected tokens after {{end}}", line)
            if top.kind == "root":
                raise TemplateError("unexpected {{end}}", line)
            del self.scope[top.scope_mark :]
            stack.pop()
        elif word in ("break", "continue"):
            if len(toks) > 1:
                raise TemplateError(f"unexpected tokens after {{{{{word}}}}}", line)
            if not any(f.kind == "range" for f in stack):
                raise TemplateError(f"{{{{{word}}}}} outside {{{{range}}}}", line)
            top.body.append(Loop(word, line))
        else:
            top.body.append(Action(self.pipeline(toks, line, ctx="command")))


@lru_cache(maxsize=32)
def parse(template: str) -> Template:
    """Parse (and cache) a template; :class:`TemplateError` for anything unsupported."""
    if not isinstance(template, str):
        raise TemplateError("the template is not a string")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the template is longer than {MAX_TEMPLATE_CHARS} characters")
    return _Parser(template).parse()


def identifiers(template: str) -> frozenset[str]:
    """Field and variable names a template uses, lowercased (Ollama's ``Template.Vars``)."""
    return parse(template).identifiers
