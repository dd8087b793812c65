"""Reading the runner logs the process manager keeps (``HOME/logs/NAME.log``), for ``GET /api/logs``.

A reader tails a log by byte offset: the first read returns the last lines and the offset of the end;
each later read passes that offset back and gets only what was appended since, whole lines only (a
line still being written waits for the next read). A log that shrank (deleted and restarted) is read
again from its tail. Every line goes through :func:`enginehouse.redact.redact`, so the store's and the
engines' directories in llama-server's command line never reach a client.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from enginehouse.redact import redact

#: The first read looks at most this far back; a later one reads at most this much past its offset.
WINDOW = 64 * 1024
TAIL_LINES = 200


@dataclass(frozen=True)
class LogChunk:
    lines: list[str]
    offset: int  # pass it back as ``since`` to get what follows
    size: int  # the file's size when read


def list_logs(log_dir: Path) -> list[dict[str, object]]:
    """The logs in ``log_dir``: name (the file's stem), size in bytes and when it last changed."""
    out: list[dict[str, object]] = []
    try:
        entries = sorted(log_dir.glob("*.log"))
    except OSError:
        return out
    for path in entries:
        try:
            st = path.stat()
        except OSError:
            continue
        modified = datetime.fromtimestamp(st.st_mtime, UTC).isoformat().replace("+00:00", "Z")
        out.append({"name": path.stem, "size": st.st_size, "modified_at": modified})
    return out


def read_log(path: Path, since: int | None = None, lines: int = TAIL_LINES) -> LogChunk:
    """The last ``lines`` lines (``since`` None), or the whole lines appended after byte ``since``."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail = since is None or since > size  # a first read, or the log was replaced: its tail
        start = max(0, size - WINDOW) if since is None or since > size else since
        f.seek(start)
        data = f.read(WINDOW)
    end = data.rfind(b"\n") + 1  # whole lines only; the rest is read next time
    if end == 0 and len(data) == WINDOW:
        end = len(data)  # one line longer than the window: give it in pieces rather than never
    body = data[:end]
    text = body.decode("utf-8", "replace").splitlines()
    if tail:
        if start > 0 and text:
            text = text[1:]  # the window began mid-line
        text = text[-lines:] if lines > 0 else []
    return LogChunk([redact(line) for line in text], start + end, size)
