"""A syntax checker for llama.cpp's GBNF grammars, run before a grammar reaches an engine.

It follows llama.cpp's own parser (``src/llama-grammar.cpp``): rules ``name ::= alternatives`` ending at
a newline (newlines are free inside parentheses), ``"literals"`` and ``[classes]`` with its escapes,
``.``, ``(groups)``, ``*``/``+``/``?``/``{m}``/``{m,}``/``{m,n}``, ``<token>``/``<[id]>`` and ``!`` before
them, ``#`` comments. After parsing it checks what llama.cpp checks once parsed: a ``root`` rule, every
reference defined, no left recursion; and the size bounds of :mod:`enginehouse.api.limits`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from enginehouse.api.limits import MAX_GRAMMAR_ALTERNATIVES, MAX_GRAMMAR_BYTES, MAX_GRAMMAR_DEPTH, MAX_REPEAT

_NAME = re.compile(r"[a-zA-Z0-9-]+")
_INT = re.compile(r"[0-9]+")
_HEX = {"x": 2, "u": 4, "U": 8}
_SIMPLE_ESCAPES = frozenset('trn\\"[]-')


class GrammarError(ValueError):
    """The grammar is not one llama.cpp would accept; the message says where."""


@dataclass
class _Item:
    kind: str  # "char" (literal, class, any, token), "ref" or "group"
    nullable_text: bool = False  # an empty literal
    ref: str = ""
    group: list[list[_Item]] = field(default_factory=list)
    optional: bool = False  # repeated with a minimum of 0


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0
        self.alternatives = 0
        self.rules: dict[str, list[list[_Item]]] = {}

    def fail(self, what: str) -> GrammarError:
        line = self.text.count("\n", 0, self.pos) + 1
        near = self.text[self.pos : self.pos + 20].split("\n")[0]
        return GrammarError(f"{what} at line {line}" + (f" near {near!r}" if near else ""))

    def peek(self, n: int = 0) -> str:
        i = self.pos + n
        return self.text[i] if i < len(self.text) else ""

    def space(self, newline_ok: bool) -> None:
        while (c := self.peek()) and (c in " \t#" or (newline_ok and c in "\r\n")):
            if c == "#":
                while self.peek() and self.peek() not in "\r\n":
                    self.pos += 1
            else:
                self.pos += 1

    def name(self) -> str:
        match = _NAME.match(self.text, self.pos)
        if not match:
            raise self.fail("expecting a rule name")
        self.pos = match.end()
        return match.group()

    def char(self) -> None:
        c = self.peek()
        if not c:
            raise self.fail("unexpected end of input")
        if c != "\\":
            self.pos += 1
            return
        kind = self.peek(1)
        if kind in _HEX:
            digits = self.text[self.pos + 2 : self.pos + 2 + _HEX[kind]]
            if len(digits) != _HEX[kind] or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"expecting {_HEX[kind]} hex digits after \\{kind}")
            self.pos += 2 + _HEX[kind]
        elif kind and kind in _SIMPLE_ESCAPES:
            self.pos += 2
        else:
            raise self.fail("unknown escape")

    def rule(self) -> None:
        name = self.name()
        self.space(False)
        if not self.text.startswith("::=", self.pos):
            raise self.fail("expecting '::='")
        self.pos += 3
        self.space(True)
        self.rules[name] = self.alternates(nested=False)
        if self.peek() == "\r":
            self.pos += 2 if self.peek(1) == "\n" else 1
        elif self.peek() == "\n":
            self.pos += 1
        elif self.peek():
            raise self.fail("expecting a newline or the end")
        self.space(True)

    def alternates(self, nested: bool) -> list[list[_Item]]:
        alts = [self.sequence(nested)]
        while self.peek() == "|":
            self.alternatives += 1
            if self.alternatives > MAX_GRAMMAR_ALTERNATIVES:
                raise self.fail(f"more than {MAX_GRAMMAR_ALTERNATIVES} alternatives")
            self.pos += 1
            self.space(True)
            alts.append(self.sequence(nested))
        return alts

    def sequence(self, nested: bool) -> list[_Item]:
        seq: list[_Item] = []
        while c := self.peek():
            if c == '"':
                self.pos += 1
                start = self.pos
                while self.peek() != '"':
                    self.char()
                seq.append(_Item("char", nullable_text=self.pos == start))
                self.pos += 1
            elif c == "[":
                self.pos += 1
                if self.peek() == "^":
                    self.pos += 1
                while self.peek() != "]":
                    self.char()
                    if self.peek() == "-" and self.peek(1) != "]":
                        self.pos += 1
                        self.char()
                self.pos += 1
                seq.append(_Item("char"))
            elif c in "<!":
                self.token()
                seq.append(_Item("char"))
            elif _NAME.match(c):
                seq.append(_Item("ref", ref=self.name()))
            elif c == "(":
                self.depth += 1
                if self.depth > MAX_GRAMMAR_DEPTH:
                    raise self.fail(f"groups nested more than {MAX_GRAMMAR_DEPTH} deep")
                self.pos += 1
                self.space(True)
                group = self.alternates(nested=True)
                if self.peek() != ")":
                    raise self.fail("expecting ')'")
                self.pos += 1
                self.depth -= 1
                seq.append(_Item("group", group=group))
            elif c == ".":
                self.pos += 1
                seq.append(_Item("char"))
            elif c in "*+?{":
                if not seq:
                    raise self.fail(f"'{c}' with nothing before it to repeat")
                seq[-1].optional |= self.repetition() == 0
            else:
                break
            self.space(nested)
        return seq

    def token(self) -> None:
        if self.peek() == "!":
            self.pos += 1
        if self.peek() != "<":
            raise self.fail("expecting '<'")
        end = self.text.find(">", self.pos)
        if end < 0 or "\n" in self.text[self.pos : end]:
            raise self.fail("expecting '>'")
        inner = self.text[self.pos + 1 : end]
        if inner.startswith("[") and not re.fullmatch(r"\[[0-9]+\]", inner):
            raise self.fail("expecting a token id as <[123]>")
        self.pos = end + 1

    def repetition(self) -> int:
        """Consume one repetition operator; its minimum."""
        c = self.peek()
        self.pos += 1
        if c != "{":
            return 1 if c == "+" else 0
        self.space(True)
        low = self.integer()
        self.space(True)
        high = low
        if self.peek() == ",":
            self.pos += 1
            self.space(True)
            high = self.integer() if _INT.match(self.peek()) else None
            self.space(True)
        if self.peek() != "}":
            raise self.fail("expecting '}'")
        self.pos += 1
        if max(low, high or 0) > MAX_REPEAT:
            raise self.fail(f"a repetition over {MAX_REPEAT}")
        if high is not None and high < low:
            raise self.fail(f"a repetition {{{low},{high}}} whose maximum is below its minimum")
        return low

    def integer(self) -> int:
        match = _INT.match(self.text, self.pos)
        if not match:
            raise self.fail("expecting an integer")
        self.pos = match.end()
        return int(match.group()[:12])  # twelve digits are past any bound: no huge int conversions


def check_grammar(text: str) -> None:
    """Raise :class:`GrammarError` unless llama.cpp would take ``text`` and it is within the bounds."""
    if len(text.encode()) > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"the grammar is over {MAX_GRAMMAR_BYTES} bytes")
    parser = _Parser(text)
    parser.space(True)
    while parser.peek():
        parser.rule()
    rules = parser.rules
    if "root" not in rules:
        raise GrammarError("the grammar has no 'root' rule")
    for alts in rules.values():
        for ref in _refs(alts):
            if ref not in rules:
                raise GrammarError(f"the grammar uses the undefined rule '{ref}'")
    _check_left_recursion(rules)


def _refs(alts: list[list[_Item]]) -> list[str]:
    found: list[str] = []
    for seq in alts:
        for item in seq:
            if item.kind == "ref":
                found.append(item.ref)
            elif item.kind == "group":
                found.extend(_refs(item.group))
    return found


def _nullable_rules(rules: dict[str, list[list[_Item]]]) -> set[str]:
    nullable: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, alts in rules.items():
            if name not in nullable and _alts_nullable(alts, nullable):
                nullable.add(name)
                changed = True
    return nullable


def _item_nullable(item: _Item, nullable: set[str]) -> bool:
    if item.optional or item.nullable_text:
        return True
    if item.kind == "ref":
        return item.ref in nullable
    if item.kind == "group":
        return _alts_nullable(item.group, nullable)
    return False


def _alts_nullable(alts: list[list[_Item]], nullable: set[str]) -> bool:
    return any(all(_item_nullable(i, nullable) for i in seq) for seq in alts)


def _first_refs(alts: list[list[_Item]], nullable: set[str]) -> set[str]:
    """The rules that can be entered before any character is matched."""
    first: set[str] = set()
    for seq in alts:
        for item in seq:
            if item.kind == "ref":
                first.add(item.ref)
            elif item.kind == "group":
                first |= _first_refs(item.group, nullable)
            if not _item_nullable(item, nullable):
                break
    return first


def _check_left_recursion(rules: dict[str, list[list[_Item]]]) -> None:
    nullable = _nullable_rules(rules)
    edges = {name: _first_refs(alts, nullable) for name, alts in rules.items()}
    done: set[str] = set()
    for start in rules:
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(start, sorted(edges[start]))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            nxt = todo.pop()
            if nxt in on_path:
                raise GrammarError(f"the grammar is left-recursive at rule '{nxt}', which llama.cpp refuses")
            if nxt not in done:
                stack.append((nxt, sorted(edges[nxt])))
                path.append(nxt)
                on_path.add(nxt)
