"""Ollama's Modelfile: parse it, write it back, and print one for a stored model.

The grammar follows Ollama's parser (``parser/parser.go``): one instruction per line, the keyword
case-insensitive; ``#`` starts a comment only at the beginning of a line; a value is the rest of the
line, or a ``"quoted"`` / ``\"\"\"triple-quoted\"\"\"`` string that may span lines. A quoted value
ends at the first line end where the text collected so far starts and ends with its quotes, exactly
as Ollama decides it; there are no escape sequences. Unlike Ollama, tabs and other non-printable
characters inside values are kept, and every error names its line.

``PARAMETER`` names and values are checked against :class:`enginehouse.api.ollama.Options`, so a
Modelfile that parses is one the engines accept.
"""

from __future__ import annotations

import json
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from enginehouse.api.ollama import Options
from enginehouse.errors import InvalidRequest

if typing.TYPE_CHECKING:
    from enginehouse.store.store import ModelRecord

log = logging.getLogger(__name__)

INSTRUCTIONS = ("from", "parameter", "template", "system", "adapter", "license", "message")
MESSAGE_ROLES = ("system", "user", "assistant")
# Parameters Ollama once had and now ignores with a warning; so do we, so old Modelfiles still work.
DEPRECATED_PARAMETERS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)
MAX_MODELFILE_CHARS = 16 << 20


class ModelfileError(InvalidRequest):
    """A Modelfile (or create request) that cannot be used; ``line`` is 1-based, None when unknown."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        self.reason = message
        super().__init__(f"(line {line}): {message}" if line is not None else message, line=line)


@dataclass
class Modelfile:
    from_: str
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    license: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)


# -- parameters ---------------------------------------------------------------------------------------


def _kind(name: str) -> str | None:
    """'int', 'float', 'bool', 'str' or 'list' for a declared Options field; None if unknown."""
    info = Options.model_fields.get(name)
    if info is None:
        return None
    ann = info.annotation
    is_union = isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union
    args = typing.get_args(ann) if is_union else ()
    candidates = [a for a in args if a is not type(None)] or [ann]
    base = candidates[0]
    if typing.get_origin(base) is list:
        return "list"
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(base, "str")


def parameter_names() -> list[str]:
    return sorted(Options.model_fields)


def _bad(name: str, value: Any, what: str, line: int | None) -> ModelfileError:
    shown = value if isinstance(value, str) else json.dumps(value)
    return ModelfileError(f"{name}: '{shown}' is not {what}", line)


def _convert(name: str, kind: str, value: Any, line: int | None) -> Any:
    """One value for a parameter, from Modelfile text or from JSON, converted to the field's type."""
    if kind == "int":
        if isinstance(value, bool):
            raise _bad(name, value, "an integer", line)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                pass
        raise _bad(name, value, "an integer", line)
    if kind == "float":
        if isinstance(value, bool):
            raise _bad(name, value, "a number", line)
        if isinstance(value, int | float):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise _bad(name, value, "a number", line) from None
        else:
            raise _bad(name, value, "a number", line)
        if not math.isfinite(out):
            raise _bad(name, value, "a finite number", line)
        return out
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            s = value.strip()
            if s in ("1", "t", "T", "true", "TRUE", "True"):  # Go's strconv.ParseBool
                return True
            if s in ("0", "f", "F", "false", "FALSE", "False"):
                return False
        raise _bad(name, value, "true or false", line)
    if kind == "list":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise _bad(name, value, "a string or a list of strings", line)
        return list(items)
    if not isinstance(value, str):
        raise _bad(name, value, "a string", line)
    return value


def _check_range(name: str, value: Any, line: int | None) -> None:
    try:
        Options.model_validate({name: value})
    except ValidationError as e:
        err = e.errors()[0]
        raise ModelfileError(f"{name}: {err.get('msg', 'invalid value')} (got {value!r})", line) from None


def parameter_value(name: str, value: Any, line: int | None = None) -> Any:
    """Validate one parameter (a Modelfile string or a JSON value); the typed value."""
    kind = _kind(name)
    if kind is None:
        raise ModelfileError(
            f"unknown parameter '{name}' (known: {', '.join(parameter_names())})",
            line,
        )
    out = _convert(name, kind, value, line)
    _check_range(name, out, line)
    return out


def validate_parameters(params: dict[str, Any] | None) -> dict[str, Any]:
    """A create request's ``parameters`` (or a built Modelfile's), typed and range-checked.

    Deprecated Ollama parameters are dropped with a warning, as Ollama does.
    """
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ModelfileError("parameters must be a JSON object")
    out: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str):
            raise ModelfileError("parameter names must be strings")
        if name in DEPRECATED_PARAMETERS:
            log.warning("parameter %s is deprecated and ignored", name)
            continue
        out[name] = parameter_value(name, value)
    return out


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Messages of a create request: a list of {role, content} with Modelfile roles."""
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise ModelfileError("messages must be a list")
    out = []
    for i, m in enumerate(messages):
        if hasattr(m, "model_dump"):
            m = m.model_dump(exclude_none=True)
        if not isinstance(m, dict):
            raise ModelfileError(f"messages[{i}] is not an object")
        role, content = m.get("role"), m.get("content", "")
        if role not in MESSAGE_ROLES:
            raise ModelfileError(f'messages[{i}]: role must be one of "system", "user", or "assistant"')
        if not isinstance(content, str):
            raise ModelfileError(f"messages[{i}]: content must be a string")
        out.append({"role": role, "content": content})
    return out


# -- parsing ------------------------------------------------------------------------------------------


def _unquote(s: str) -> tuple[str, bool]:
    """Ollama's unquote: (value, complete) for the stripped text collected so far."""
    if s.startswith('"""'):
        if len(s) >= 6 and s.endswith('"""'):
            return s[3:-3], True
        return "", False
    if s.startswith('"'):
        if len(s) >= 2 and s.endswith('"'):
            return s[1:-1], True
        return "", False
    return s, True


_WS = " \t\r\n\f\v"


def _split_word(rest: str) -> tuple[str, str]:
    """The first word of ``rest`` (up to a space or tab) and what follows it."""
    for i, ch in enumerate(rest):
        if ch in " \t":
            return rest[:i], rest[i + 1 :]
    return rest, ""


def _read_value(lines: list[str], i: int, first: str) -> tuple[str, int]:
    """The value starting with ``first`` on line index ``i``; (value, index of its last line).

    Only a line that ends with a quote can close a quoted value, so only those are checked: the
    cost stays linear in the length of the value.
    """
    parts = [first]
    j = i
    while True:
        if j == i or parts[-1].rstrip(_WS).endswith('"'):
            value, done = _unquote("\n".join(parts).strip(_WS))
            if done:
                return value, j
        j += 1
        if j >= len(lines):
            quote = '"""' if first.lstrip(_WS).startswith('"""') else '"'
            raise ModelfileError(f"unterminated {quote} quote (the value never ends)", i + 1)
        parts.append(lines[j])


def parse(text: str) -> Modelfile:
    """Parse a Modelfile; :class:`ModelfileError` names the line and the reason on failure."""
    if not isinstance(text, str):
        raise ModelfileError("the Modelfile is not text")
    if len(text) > MAX_MODELFILE_CHARS:
        raise ModelfileError(f"the Modelfile is larger than {MAX_MODELFILE_CHARS} characters")
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    from_: str | None = None
    mf = Modelfile(from_="")
    i = 0
    while i < len(lines):
        line = lines[i]
        lineno = i + 1
        stripped = line.lstrip(_WS)
        if not stripped.strip(_WS) or stripped.startswith("#"):
            i += 1
            continue
        keyword, rest = _split_word(stripped)
        if keyword.rstrip(_WS) != keyword:  # "FROM\r" on a CRLF line: a keyword without a value
            keyword = keyword.rstrip(_WS)
            rest = ""
        cmd = keyword.lower()
        if cmd not in INSTRUCTIONS:
            raise ModelfileError(
                f"unknown instruction '{keyword}': must be one of "
                + ", ".join(c.upper() for c in INSTRUCTIONS),
                lineno,
            )
        rest = rest.lstrip(" \t")
        target: str | None = None
        if cmd in ("parameter", "message"):
            target, rest = _split_word(rest)
            target = target.rstrip(_WS)
            rest = rest.lstrip(" \t")
            if not target:
                what = "a parameter name" if cmd == "parameter" else "a role"
                raise ModelfileError(f"{keyword.upper()} needs {what} and a value", lineno)
        if not rest.strip(_WS):
            raise ModelfileError(f"{keyword.upper()} needs a value", lineno)
        value, last = _read_value(lines, i, rest)
        if cmd == "from":
            if from_ is not None:
                raise ModelfileError(
                    "more than one FROM (multimodal projectors are not supported yet)", lineno
                )
            if not value.strip():
                raise ModelfileError("FROM needs a model name, a file path or a blob digest", lineno)
            from_ = value
        elif cmd == "parameter":
            assert target is not None
            if target in DEPRECATED_PARAMETERS:
                log.warning("(line %d): parameter %s is deprecated and ignored", lineno, target)
            else:
                typed = parameter_value(target, value, lineno)
                if _kind(target) == "list":
                    mf.parameters.setdefault(target, []).extend(typed)
                else:
                    mf.parameters[target] = typed
        elif cmd == "message":
            if target not in MESSAGE_ROLES:
                raise ModelfileError(
                    f'message role \'{target}\' must be one of "system", "user", or "assistant"',
                    lineno,
                )
            assert target is not None
            mf.messages.append({"role": target, "content": value})
        elif cmd == "template":
            mf.template = value
        elif cmd == "system":
            mf.system = value
        elif cmd == "license":
            mf.license.append(value)
        elif cmd == "adapter":
            if not value.strip():
                raise ModelfileError("ADAPTER needs a file path or a blob digest", lineno)
            mf.adapters.append(value)
        i = last + 1
    if from_ is None:
        raise ModelfileError("no FROM line: a Modelfile must say which model it builds on")
    mf.from_ = from_
    return mf


# -- writing ------------------------------------------------------------------------------------------


def _parses_back(encoded: str, value: str) -> bool:
    lines = encoded.split("\n")
    try:
        got, last = _read_value(lines, 0, lines[0])
    except ModelfileError:
        return False
    return got == value and last == len(lines) - 1


def quote(value: str) -> str:
    """The shortest of bare, "quoted" and \"\"\"triple-quoted\"\"\" text that reads back as ``value``."""
    candidates = []
    if value and "\n" not in value and value.strip(_WS) == value and not value.startswith('"'):
        candidates.append(value)
    quoted = [f'"{value}"', f'"""{value}"""']
    candidates += quoted[::-1] if "\n" in value else quoted  # multi-line text reads best in triples
    for c in candidates:
        if _parses_back(c, value):
            return c
    raise ModelfileError(f"cannot be written in a Modelfile: {value[:40]!r}")


def format_parameter_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return quote(str(value))


def _parameter_lines(params: dict[str, Any]) -> list[str]:
    out = []
    for name, value in params.items():
        for v in value if isinstance(value, list) else [value]:
            out.append(f"PARAMETER {name} {format_parameter_value(v)}")
    return out


def _body(mf: Modelfile) -> list[str]:
    lines = [f"FROM {quote(mf.from_)}"]
    lines += [f"ADAPTER {quote(a)}" for a in mf.adapters]
    if mf.template is not None:
        lines.append(f"TEMPLATE {quote(mf.template)}")
    if mf.system is not None:
        lines.append(f"SYSTEM {quote(mf.system)}")
    lines += _parameter_lines(mf.parameters)
    lines += [f"LICENSE {quote(text)}" for text in mf.license]
    lines += [f"MESSAGE {m['role']} {quote(m['content'])}" for m in mf.messages]
    return lines


def render(mf: Modelfile) -> str:
    """Modelfile text such that ``parse(render(mf)) == mf`` (for a valid ``mf``)."""
    return "\n".join(_body(mf)) + "\n"


def modelfile_for(record: ModelRecord) -> str:
    """What ``show --modelfile`` prints: a Modelfile that re-creates ``record`` from its blobs.

    The blobs are named by digest, which ``create`` takes from any client, so no server path reaches
    one (Ollama prints the blob's path here). Parameters unknown to enginehouse, projectors and
    messages with roles a Modelfile cannot hold are listed as comments, so the output always parses.
    """
    header = [
        '# Modelfile generated by "enginehouse show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {record.name.display}",
        "",
    ]
    params: dict[str, Any] = {}
    notes: list[str] = []
    for name, value in record.params.items():
        try:
            params[name] = parameter_value(name, value)
        except ModelfileError as e:
            notes.append(f"# PARAMETER {name} {json.dumps(value)} (left out: {e.reason})")
    messages = []
    for m in record.messages:
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content", "") if isinstance(m, dict) else None
        if role in MESSAGE_ROLES and isinstance(content, str):
            messages.append({"role": role, "content": content})
        else:
            notes.append(f"# MESSAGE left out: {json.dumps(m)[:80]}")
    notes += [f"# projector {p} (not supported by Modelfiles here yet)" for p in record.projectors]
    mf = Modelfile(
        from_=record.model_digest,
        parameters=params,
        template=record.template,
        system=record.system,
        license=[record.license] if record.license else [],
        adapters=record.adapter_digests,
        messages=messages,
    )
    return "\n".join(header + _body(mf) + notes) + "\n"
