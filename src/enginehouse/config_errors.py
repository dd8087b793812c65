"""How bad settings are reported: :class:`SettingError` names the environment variable and its value;
:class:`ConfigFileError` says ``file:line: key: reason`` for enginehouse.toml;
:class:`KeyedValueError` carries the keys from a validator to the loader; :func:`line_of` finds the line."""

from __future__ import annotations

import re
from pathlib import Path

from enginehouse.errors import EnginehouseError


class ConfigFileError(EnginehouseError):
    status = 500

    def __init__(self, path: Path | str, message: str, line: int | None = None, key: str = "") -> None:
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")
        self.path, self.line, self.key = Path(path), line, key


class SettingError(EnginehouseError, ValueError):
    """An environment setting whose value cannot be used: ``NAME=value: what it must be``. The CLI
    prints it as one line (cli/main.py), never a traceback."""


class KeyedValueError(ValueError):
    """A validation error that names the keys (relative to the model it is raised in, or absolute
    when raised by :class:`FileConfig`) so the message can point at the line."""

    def __init__(self, keys: list[str], message: str, *, absolute: bool = False) -> None:
        super().__init__(message)
        self.keys, self.absolute = keys, absolute


def line_of(text: str, keys: list[str]) -> int | None:
    """The line that defines ``keys`` (e.g. ["models", "a:b", "pinned"]): its table header, then the
    key inside it. Good enough for error messages; TOML's inline and dotted forms fall back to the
    table's line."""
    if not keys:
        return None
    lines = text.splitlines()

    def header(parts: list[str]) -> re.Pattern[str]:
        quoted = r"\s*\.\s*".join(rf"(?:\"{re.escape(p)}\"|'{re.escape(p)}'|{re.escape(p)})" for p in parts)
        return re.compile(rf"^\s*\[\s*{quoted}\s*\]")

    best: int | None = None
    for split in range(len(keys), 0, -1):
        table, rest = keys[:split], keys[split:]
        pattern = header(table)
        for number, line in enumerate(lines, 1):
            if not pattern.match(line):
                continue
            if not rest:
                return number
            key = re.compile(rf"^\s*(?:\"{re.escape(rest[0])}\"|{re.escape(rest[0])})\s*=")
            for offset, inner in enumerate(lines[number:], number + 1):
                if inner.lstrip().startswith("["):
                    break
                if key.match(inner):
                    return offset
            best = best or number
        if best:
            return best
    key = re.compile(rf"^\s*{re.escape(keys[-1])}\s*=")
    found = next((n for n, line in enumerate(lines, 1) if key.match(line)), None)
    if found is None:  # a table written only through its sub-tables: [routers.r.routes.x]
        sub = re.compile(header(keys).pattern.rstrip("\\]") + r"\s*\.")
        found = next((n for n, line in enumerate(lines, 1) if sub.match(line)), None)
    return found
