"""What a client may read in a message: no server directory, traceback or Python exception class name.

Messages are fixed where they are made (they name a model, a blob digest or a file name, never a
directory); this is the last line of defence for whatever slips through, such as a runner's log tail
quoted by a start failure. A path under a hidden directory keeps only its last part (``…/sha256-ab12``).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

INTERNAL = "internal server error (details are in the server log)"
_PATH_CHAR = r"[^\s'\"`,;:()\[\]<>]"
_NAME_CHAR = r"[^\s'\"`,;:()\[\]<>/]"  # a path character that would make the root a longer name
_CLASS_NAME = re.compile(r"\b(?:[A-Z][a-z0-9]+)+(?:Error|Exception)\b:?\s*")
_TRACEBACK = ("Traceback (most recent call last)", 'File "')

_roots: set[str] = set()
_pattern: re.Pattern[str] | None = None


def hide_paths_under(*dirs: Path | str | None) -> None:
    """Add directories (the home, the store, the engines) whose paths no client message may show."""
    global _pattern
    for d in dirs:
        if d is None:
            continue
        for form in {str(d), os.path.realpath(d)}:  # /tmp may be a link, and messages use either form
            form = form.rstrip("/")
            if len(form) > 1:
                _roots.add(form)
    alternatives = "|".join(re.escape(r) for r in sorted(_roots, key=len, reverse=True))
    _pattern = re.compile(rf"(?<![\w.~/-])(?:{alternatives})(?!{_NAME_CHAR})(?:/{_PATH_CHAR}*)?")


def _shorten(match: re.Match[str]) -> str:
    last = match.group(0).rstrip("/").rsplit("/", 1)[-1]
    return f"…/{last}" if last and match.group(0) not in _roots else "…"


def redact(message: str) -> str:
    """``message`` with hidden directories shortened and exception class names removed."""
    if any(marker in message for marker in _TRACEBACK):
        return INTERNAL
    if _pattern is not None:
        message = _pattern.sub(_shorten, message)
    return _CLASS_NAME.sub("", message)


# The process's own places; the server adds its configured home and store at start-up.
hide_paths_under(
    Path.home(),
    tempfile.gettempdir(),
    sys.prefix,
    Path(__file__).resolve().parent.parent,
    *([os.getcwd()] if os.getcwd() != "/" else []),
)
