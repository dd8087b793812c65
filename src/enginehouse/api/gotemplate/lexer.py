"""Tokens of a template action: strings with Go escapes, numbers, fields, variables, keywords."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from enginehouse.api.gotemplate.errors import TemplateError


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
SPACE = " \t\r\n"
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


def lex_action(src: str, pos: int, line: int) -> tuple[list[Tok], int, bool]:
    """Tokens of the action starting at ``pos``; (tokens, position after ``}}``, trim right)."""
    toks: list[Tok] = []
    n = len(src)
    i = pos
    prev_end = -1
    while True:
        if i >= n:
            raise TemplateError("unclosed action (no '}}')", line)
        ch = src[i]
        if ch in SPACE:
            j = i
            while j < n and src[j] in SPACE:
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
