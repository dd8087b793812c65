"""A small, safe renderer for the Go ``text/template`` subset that Ollama's model templates use.

Supported: text with ``{{ }}`` actions and ``{{-`` / ``-}}`` whitespace trimming; ``{{/* comments */}}``;
fields (``.System``, ``.Function.Name``), ``.`` and variables (``$``, ``$x``, ``$.Messages``, ``$m.Role``);
string (``"..."`` with Go escapes, raw backquotes), number, ``true``/``false``/``nil`` literals;
parentheses and ``|`` pipelines; ``$x := ...`` / ``$x = ...``; ``if`` / ``else if`` / ``else`` / ``end``;
``range`` (``$i, $e :=``, ``$e :=``, over lists, maps in key order and integers) with ``else``,
``break``, ``continue``; ``with`` / ``else with``; the functions ``eq ne lt le gt ge and or not len
index slice print json``.

Anything else (``define``, ``template``, ``block``, ``printf``, method calls, character constants ...)
is refused with :class:`TemplateError` naming it, when the template is parsed. Nothing here can run
code: evaluation only reads the values it is given, and output size, loop iterations and nesting
depth are bounded.

:func:`render` executes a template with the given values. :func:`render_chat` is what Ollama's
``Template.Execute`` does with a list of messages (collation, templates without ``.Messages``
rendered turn by turn, the last one cut after ``.Response``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

from enginehouse.errors import InvalidRequest

MAX_TEMPLATE_CHARS = 1 << 20
MAX_OUTPUT_CHARS = 16 << 20
MAX_ITERATIONS = 100_000
MAX_DEPTH = 64


class TemplateError(InvalidRequest):
    """A template that uses something this renderer does not support, or fails to execute."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"template: line {line}: {message}" if line else f"template: {message}")


# -- lexing -------------------------------------------------------------------------------------------


@dataclass
class Tok:
    kind: str  # field var dot str num bool nil ident ( ) | , := =
    value: Any
    adjacent: bool  # no space before this token (fields chain onto what precedes them)
    names: tuple[str, ...] = ()  # the field chain of a field or variable token


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELD_CHAIN = re.compile(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
)
_SPACE = " \t\r\n"
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}


def _unescape(body: str, line: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in ("x", "u", "U"):
            n = {"x": 2, "u": 4, "U": 8}[nxt]
            digits = body[i + 2 : i + 2 + n]
            if len(digits) != n or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise TemplateError(f"bad \\{nxt} escape in string", line)
            out.append(chr(int(digits, 16)))
            i += 2 + n
        elif nxt and nxt in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not all(c in "01234567" for c in digits):
                raise TemplateError("bad octal escape in string", line)
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise TemplateError(f"unknown escape sequence \\{nxt} in string", line)
    return "".join(out)


def _lex_action(src: str, pos: int, line: int) -> tuple[list[Tok], int, bool]:
    """Tokens of the action starting at ``pos``; (tokens, position after ``}}``, trim right)."""
    toks: list[Tok] = []
    n = len(src)
    i = pos
    prev_end = -1
    while True:
        if i >= n:
            raise TemplateError("unclosed action (no '}}')", line)
        ch = src[i]
        if ch in _SPACE:
            j = i
            while j < n and src[j] in _SPACE:
                j += 1
            if src.startswith("-}}", j):
                return toks, j + 3, True
            i = j
            continue
        if src.startswith("}}", i):
            return toks, i + 2, False
        adjacent = i == prev_end
        if ch == '"':
            j = i + 1
            while j < n and src[j] != '"':
                if src[j] == "\n":
                    raise TemplateError("unterminated quoted string", line)
                j += 2 if src[j] == "\\" else 1
            if j >= n:
                raise TemplateError("unterminated quoted string", line)
            toks.append(Tok("str", _unescape(src[i + 1 : j], line), adjacent))
            i = j + 1
        elif ch == "`":
            j = src.find("`", i + 1)
            if j < 0:
                raise TemplateError("unterminated raw string", line)
            toks.append(Tok("str", src[i + 1 : j], adjacent))
            i = j + 1
        elif ch == "'":
            raise TemplateError("character constants are not supported", line)
        elif ch in "()|,":
            toks.append(Tok(ch, ch, adjacent))
            i += 1
        elif src.startswith(":=", i):
            toks.append(Tok(":=", ":=", adjacent))
            i += 2
        elif ch == "=":
            toks.append(Tok("=", "=", adjacent))
            i += 1
        elif ch == "$":
            m = _IDENT.match(src, i + 1)
            name = "$" + (m.group(0) if m else "")
            j = m.end() if m else i + 1
            chain = _FIELD_CHAIN.match(src, j)
            names = tuple(chain.group(0)[1:].split(".")) if chain else ()
            toks.append(Tok("var", name, adjacent, names))
            i = chain.end() if chain else j
        elif ch == ".":
            chain = _FIELD_CHAIN.match(src, i)
            if chain:
                toks.append(Tok("field", None, adjacent, tuple(chain.group(0)[1:].split("."))))
                i = chain.end()
            elif (num := _NUMBER.match(src, i)) and num.end() > i + 1:
                toks.append(Tok("num", _number(num.group(0), line), adjacent))
                i = num.end()
            else:
                toks.append(Tok("dot", None, adjacent))
                i += 1
        elif (num := _NUMBER.match(src, i)) and (ch.isdigit() or ch in "+-"):
            toks.append(Tok("num", _number(num.group(0), line), adjacent))
            i = num.end()
        elif m := _IDENT.match(src, i):
            word = m.group(0)
            if word in ("true", "false"):
                toks.append(Tok("bool", word == "true", adjacent))
            elif word == "nil":
                toks.append(Tok("nil", None, adjacent))
            else:
                toks.append(Tok("ident", word, adjacent))
            i = m.end()
        else:
            raise TemplateError(f"unexpected {ch!r} in action", line)
        prev_end = i


def _number(text: str, line: int) -> int | float:
    t = text.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[xXbBoO].*", t):
            return int(t, 0)
        if re.fullmatch(r"[+-]?\d+", t):
            return int(t, 10)
        return float(t)
    except ValueError:
        raise TemplateError(f"bad number syntax: {text}", line) from None


# -- parse tree ---------------------------------------------------------------------------------------


@dataclass
class Text:
    text: str


@dataclass
class Operand:
    kind: str  # field var dot lit ident pipe
    value: Any = None
    names: tuple[str, ...] = ()  # field chain applied to the operand


@dataclass
class Pipeline:
    decl: list[str]
    assign: bool  # "=" (assign to an existing variable) rather than ":="
    cmds: list[list[Operand]]
    line: int


@dataclass
class Action:
    pipe: Pipeline


@dataclass
class If:
    branches: list[tuple[Pipeline, list[Any]]]
    else_body: list[Any] | None = None
    kind: str = "if"  # or "with": the branch value becomes the dot


@dataclass
class Range:
    pipe: Pipeline
    body: list[Any]
    else_body: list[Any] | None = None


@dataclass
class Loop:
    kind: str  # break / continue
    line: int


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


@dataclass
class Template:
    nodes: list[Any]
    identifiers: frozenset[str] = field(default_factory=frozenset)


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
                text = text.lstrip(_SPACE)
            if start < 0:
                if text:
                    stack[-1].body.append(Text(text))
                break
            line += src.count("\n", counted, start)
            counted = start
            j = start + 2
            if src.startswith("-", j) and j + 1 < n and src[j + 1] in _SPACE:
                text = text.rstrip(_SPACE)
                j += 2
            if text:
                stack[-1].body.append(Text(text))
            if src.startswith("/*", j):
                end = src.find("*/", j + 2)
                if end < 0:
                    raise TemplateError("unclosed comment", line)
                k = end + 2
                if k < n and src[k] in _SPACE and src.startswith("-}}", k + 1):
                    pos, pending_trim = k + 4, True
                elif src.startswith("}}", k):
                    pos, pending_trim = k + 2, False
                else:
                    raise TemplateError("comment ends before closing delimiter", line)
                continue
            toks, pos, pending_trim = _lex_action(src, j, line)
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


# -- values -------------------------------------------------------------------------------------------

# Ollama's api types as the templates see them: Go field name -> (JSON key, type, omitempty).
_SCHEMAS: dict[str, list[tuple[str, str, str, bool]]] = {
    "Message": [
        ("Role", "role", "str", False),
        ("Content", "content", "str", False),
        ("Thinking", "thinking", "str", True),
        ("Images", "images", "list", True),
        ("ToolCalls", "tool_calls", "list:ToolCall", True),
        ("ToolName", "tool_name", "str", True),
        ("ToolCallID", "tool_call_id", "str", True),
    ],
    "ToolCall": [("ID", "id", "str", True), ("Function", "function", "struct:ToolCallFunction", False)],
    "ToolCallFunction": [
        ("Index", "index", "int", True),
        ("Name", "name", "str", False),
        ("Arguments", "arguments", "args", False),
    ],
    "Tool": [
        ("Type", "type", "str", False),
        ("Items", "items", "any", True),
        ("Function", "function", "struct:ToolFunction", False),
    ],
    "ToolFunction": [
        ("Name", "name", "str", False),
        ("Description", "description", "str", True),
        ("Parameters", "parameters", "struct:ToolFunctionParameters", False),
    ],
    "ToolFunctionParameters": [
        ("Type", "type", "str", False),
        ("Defs", "$defs", "any", True),
        ("Items", "items", "any", True),
        ("Required", "required", "list", True),
        ("Properties", "properties", "map:ToolProperty", False),
    ],
    "ToolProperty": [
        ("Type", "type", "any", True),
        ("Items", "items", "any", True),
        ("Description", "description", "str", True),
        ("Enum", "enum", "list", True),
    ],
}


class JsonMap(dict):  # type: ignore[type-arg]
    """A map that prints as JSON (Ollama's ToolCallFunctionArguments has such a String method)."""


class GoStruct:
    """A read-only view of a JSON object as one of Ollama's Go structs (fields by Go name)."""

    __slots__ = ("data", "kind")

    def __init__(self, kind: str, data: Any) -> None:
        self.kind = kind
        self.data = data if isinstance(data, dict) else {}

    def get(self, name: str, line: int) -> Any:
        for go_name, key, typ, _ in _SCHEMAS[self.kind]:
            if go_name == name:
                return _convert(typ, self.data.get(key))
        raise TemplateError(f"can't evaluate field {name} in type api.{self.kind}", line)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for go_name, key, _, omitempty in _SCHEMAS[self.kind]:
            value = self.get(go_name, 0)
            if omitempty and not _truthy(value):
                continue
            out[key] = _plain(value)
        return out


def _convert(typ: str, raw: Any) -> Any:
    if typ == "str":
        if raw is None:
            return ""
        return raw if isinstance(raw, str) else _json(raw)
    if typ == "int":
        return raw if isinstance(raw, int) and not isinstance(raw, bool) else 0
    if typ == "list":
        return list(raw) if isinstance(raw, list) else []
    if typ == "args":
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raw = {}
        return JsonMap(raw) if isinstance(raw, dict) else JsonMap()
    if typ.startswith("list:"):
        kind = typ[5:]
        return [GoStruct(kind, item) for item in raw] if isinstance(raw, list) else []
    if typ.startswith("struct:"):
        return GoStruct(typ[7:], raw)
    if typ.startswith("map:"):
        kind = typ[4:]
        return {k: GoStruct(kind, v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    return raw


def _plain(v: Any) -> Any:
    """A value as plain JSON data (maps sorted by key, as Go marshals them)."""
    if isinstance(v, GoStruct):
        return v.to_json()
    if isinstance(v, dict):
        return {str(k): _plain(v[k]) for k in sorted(v, key=str)}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _json(v: Any) -> str:
    """Go's json.Marshal: compact, with <, >, & and U+2028/9 escaped."""
    s = json.dumps(_plain(v), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for a, b in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        s = s.replace(a, b)
    return s


def _go_float(f: float) -> str:
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    d = Decimal(repr(f)).normalize()
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    x = len(digits) + exp - 1
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    if x < -4 or x >= 21:
        ds = "".join(map(str, digits))
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{'-' if sign else ''}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    return format(d, "f")


def _fmt(v: Any) -> str:
    """How text/template prints a value (fmt's %v); structs print as JSON here."""
    if v is None:
        return "<no value>"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, GoStruct | JsonMap):
        return _json(v)
    if isinstance(v, dict):
        return "map[" + " ".join(f"{_fmt(k)}:{_inner(v[k])}" for k in sorted(v, key=str)) + "]"
    if isinstance(v, list | tuple):
        return "[" + " ".join(_inner(x) for x in v) + "]"
    return str(v)


def _inner(v: Any) -> str:
    return "<nil>" if v is None else _fmt(v)


def _truthy(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0
    if isinstance(v, str | list | tuple | dict):
        return len(v) > 0
    return True  # structs are always true


# -- execution ----------------------------------------------------------------------------------------


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _kind_of(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "other"


def _compare(a: Any, b: Any, line: int) -> int:
    ka, kb = _kind_of(a), _kind_of(b)
    if ka != kb or ka not in ("number", "string"):
        raise TemplateError("incompatible types for comparison", line)
    return (a > b) - (a < b)


def _eq(a: Any, b: Any, line: int) -> bool:
    ka, kb = _kind_of(a), _kind_of(b)
    if ka == "other" or kb == "other":
        raise TemplateError("non-comparable type in eq", line)
    if "nil" in (ka, kb):
        return a is b
    if ka != kb:
        raise TemplateError("incompatible types for comparison", line)
    return bool(a == b)


def _int_arg(v: Any, what: str, line: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TemplateError(f"{what}: index must be an integer", line)
    return v


def _len(v: Any, line: int) -> int:
    if isinstance(v, str):
        return len(v.encode("utf-8"))  # Go's len of a string counts bytes
    if isinstance(v, list | tuple | dict):
        return len(v)
    raise TemplateError(f"len of {_kind_of(v) if v is not None else 'nil'} value", line)


def _slice(v: Any, idx: list[Any], line: int) -> Any:
    if not isinstance(v, str | list | tuple):
        raise TemplateError("can't slice a value that is not a list or string", line)
    if len(idx) > 3 or (len(idx) == 3 and isinstance(v, str)):
        raise TemplateError("too many slice indexes", line)
    ints = [_int_arg(i, "slice", line) for i in idx]
    seq: Any = v.encode("utf-8") if isinstance(v, str) else v
    size = len(seq)
    lo = ints[0] if ints else 0
    hi = ints[1] if len(ints) > 1 else size
    cap = ints[2] if len(ints) > 2 else size
    if not 0 <= lo <= hi <= cap <= size:
        raise TemplateError(f"slice index out of range: {ints} of {size}", line)
    out = seq[lo:hi]
    return out.decode("utf-8", errors="replace") if isinstance(v, str) else list(out)


def _index(v: Any, idx: list[Any], line: int) -> Any:
    for i in idx:
        if isinstance(v, dict):
            v = v.get(i)
        elif isinstance(v, list | tuple):
            k = _int_arg(i, "index", line)
            if not 0 <= k < len(v):
                raise TemplateError(f"index out of range: {k}", line)
            v = v[k]
        elif isinstance(v, str):
            k = _int_arg(i, "index", line)
            b = v.encode("utf-8")
            if not 0 <= k < len(b):
                raise TemplateError(f"index out of range: {k}", line)
            v = b[k]
        else:
            raise TemplateError("can't index a value that is not a list, map or string", line)
    return v


def _print(args: list[Any]) -> str:
    # fmt.Sprint: a space between operands when neither is a string.
    out = ""
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out += " "
        out += _inner(a)
    return out


class _Exec:
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
                if _truthy(v) != (name == "and"):
                    return v
            return v
        vals = list(values())

        def want(n: int) -> None:
            if len(vals) != n:
                raise TemplateError(f"wrong number of args for {name}: want {n} got {len(vals)}", line)

        if name == "not":
            want(1)
            return not _truthy(vals[0])
        if name in ("eq", "ne"):
            if len(vals) < 2 or (name == "ne" and len(vals) != 2):
                raise TemplateError(f"wrong number of args for {name}", line)
            hit = any(_eq(vals[0], b, line) for b in vals[1:])
            return hit if name == "eq" else not hit
        if name in ("lt", "le", "gt", "ge"):
            want(2)
            c = _compare(vals[0], vals[1], line)
            return {"lt": c < 0, "le": c <= 0, "gt": c > 0, "ge": c >= 0}[name]
        if name == "len":
            want(1)
            return _len(vals[0], line)
        if name == "index":
            if not vals:
                raise TemplateError("wrong number of args for index", line)
            return _index(vals[0], vals[1:], line)
        if name == "slice":
            if not vals:
                raise TemplateError("wrong number of args for slice", line)
            return _slice(vals[0], vals[1:], line)
        if name == "print":
            return _print(vals)
        if name == "json":
            want(1)
            try:
                return _json(vals[0])
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
                    self.emit(_fmt(value))
            elif isinstance(node, If):
                self.branch(node, dot)
            elif isinstance(node, Range):
                self.range(node, dot)
            elif isinstance(node, Loop):
                raise _Break() if node.kind == "break" else _Continue()

    def branch(self, node: If, dot: Any) -> None:
        mark = len(self.vars)
        try:
            for pipe, body in node.branches:
                value = self.pipeline(pipe, dot)
                if _truthy(value):
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
                raise TemplateError(f"range can't iterate over {_fmt(value)[:40]!r}", pipe.line)
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
                except _Continue:
                    continue
                except _Break:
                    break
            if not ran and node.else_body is not None:
                del self.vars[mark:]
                self.run(node.else_body, dot)
        finally:
            del self.vars[mark:]


def _as_dict(m: Any) -> Any:
    if hasattr(m, "model_dump"):
        return m.model_dump(exclude_none=True)
    return m


def _messages(messages: list[Any] | None) -> list[GoStruct]:
    return [GoStruct("Message", _as_dict(m)) for m in messages or []]


def _tools(tools: list[Any] | None) -> list[GoStruct]:
    return [GoStruct("Tool", _as_dict(t)) for t in tools or []]


def _execute(tmpl: Template, nodes: list[Any], values: dict[str, Any], max_output: int) -> str:
    ex = _Exec(values, max_output)
    try:
        ex.run(nodes, values)
    except (_Break, _Continue):  # pragma: no cover - the parser only allows them inside range
        raise TemplateError("break or continue outside range") from None
    except RecursionError:  # deeply nested data (tool arguments), as nesting is bounded at parse time
        raise TemplateError("values nested too deeply") from None
    return "".join(ex.out)


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
    return _execute(tmpl, _with_response(tmpl), values, max_output)


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
        return _execute(tmpl, nodes, values, max_output)
    system, collated = collate(messages)
    if "messages" in tmpl.identifiers:
        values = {"System": system, "Messages": _messages(collated), "Tools": _tools(tools), "Response": ""}
        return _execute(tmpl, nodes, {**values, **flags}, max_output)
    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def execute(ns: list[Any]) -> None:
        budget = max_output - sum(map(len, parts))
        parts.append(_execute(tmpl, ns, {**turn, **flags}, budget))
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
