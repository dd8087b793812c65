"""A wire model's validation failure as the client's error: which field (OpenAI's ``param``) and why."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from enginehouse.api.limits import param_path
from enginehouse.errors import InvalidRequest

# Parts of a pydantic location that name a member of a union ('str', 'list[dict[str,any]]',
# 'constrained-str', 'function-after[...]'), not a field: a client never wrote them.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|[a-z-]+\[.*\]|constrained-[a-z]+|[A-Z]\w*)$")
_SHOWN = 3  # errors named in one message


def field_of(loc: tuple[int | str, ...]) -> str:
    """('messages', 0, 'content', 'str') -> 'messages[0].content'."""
    return param_path([p for p in loc if isinstance(p, int) or not _UNION_MEMBER.match(p)]) or "body"


def _why(errors: list[dict[str, Any]]) -> str:
    """One reason per field: a union's type mismatches read as one 'should be a or b'."""
    specific = [e for e in errors if not e["type"].endswith("_type")]
    if specific:
        return specific[0]["msg"]
    kinds = [e["msg"].removeprefix("Input should be ") for e in errors]
    return "Input should be " + " or ".join(dict.fromkeys(kinds))


def invalid_request(exc: ValidationError) -> InvalidRequest:
    """The first few failures, by field; ``param`` is the first field."""
    by_field: dict[str, list[dict[str, Any]]] = {}
    for err in exc.errors(include_url=False):
        by_field.setdefault(field_of(err["loc"]), []).append(err)
    parts = [f"'{name}': {_why(errs)}" for name, errs in list(by_field.items())[:_SHOWN]]
    first = next(iter(by_field), None)
    return InvalidRequest("invalid request: " + "; ".join(parts), param=None if first == "body" else first)
