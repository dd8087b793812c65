"""The built-in functions' semantics: comparisons, len, index, slice and print."""

from __future__ import annotations

from typing import Any

from enginehouse.api.gotemplate.errors import TemplateError
from enginehouse.api.gotemplate.values import format_inner


def kind_of(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "other"


def compare(a: Any, b: Any, line: int) -> int:
    ka, kb = kind_of(a), kind_of(b)
    if ka != kb or ka not in ("number", "string"):
        raise TemplateError("incompatible types for comparison", line)
    return (a > b) - (a < b)


def equal(a: Any, b: Any, line: int) -> bool:
    ka, kb = kind_of(a), kind_of(b)
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


def length(v: Any, line: int) -> int:
    if isinstance(v, str):
        return len(v.encode("utf-8"))  # Go's len of a string counts bytes
    if isinstance(v, list | tuple | dict):
        return len(v)
    raise TemplateError(f"len of {kind_of(v) if v is not None else 'nil'} value", line)


def go_slice(v: Any, idx: list[Any], line: int) -> Any:
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


def go_index(v: Any, idx: list[Any], line: int) -> Any:
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


def go_print(args: list[Any]) -> str:
    # fmt.Sprint: a space between operands when neither is a string.
    out = ""
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out += " "
        out += format_inner(a)
    return out
