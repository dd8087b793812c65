"""Values as templates see them: Ollama's Go structs, JSON, fmt-style printing and truth."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from enginehouse.api.gotemplate.errors import TemplateError

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
            if omitempty and not truthy(value):
                continue
            out[key] = _plain(value)
        return out


def _convert(typ: str, raw: Any) -> Any:
    if typ == "str":
        if raw is None:
            return ""
        return raw if isinstance(raw, str) else to_json(raw)
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


def to_json(v: Any) -> str:
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


def format_value(v: Any) -> str:
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
        return to_json(v)
    if isinstance(v, dict):
        return "map[" + " ".join(f"{format_value(k)}:{format_inner(v[k])}" for k in sorted(v, key=str)) + "]"
    if isinstance(v, list | tuple):
        return "[" + " ".join(format_inner(x) for x in v) + "]"
    return str(v)


def format_inner(v: Any) -> str:
    return "<nil>" if v is None else format_value(v)


def truthy(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0
    if isinstance(v, str | list | tuple | dict):
        return len(v) > 0
    return True  # structs are always true
