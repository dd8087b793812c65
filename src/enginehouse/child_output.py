"""A child process's output, line by line, without making the main thread deaf to Ctrl-C.

``for line in proc.stdout`` blocks the main thread in read(2). Python runs its SIGINT handler (raising
KeyboardInterrupt) only when that read returns, and a signal that lands just before the read starts,
or on another thread, does not interrupt it: the CLI then ignores Ctrl-C until the child prints again
or exits, which for a converter or a compiler can be minutes. Here a reader thread does the blocking
read and the main thread waits on a queue with a short timeout, so a pending signal is acted on within
``poll`` seconds whatever the child does.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

_EOF = object()


def output_lines(proc: subprocess.Popen[str], poll: float = 0.2) -> Iterator[str]:
    """Each line ``proc`` writes to its (text-mode) stdout, until it closes it."""
    assert proc.stdout is not None
    lines: queue.Queue[object] = queue.Queue()
    stdout = proc.stdout

    def read() -> None:
        try:
            for line in stdout:
                lines.put(line)
        except (OSError, ValueError):  # closed under us: the caller is going away
            pass
        finally:
            lines.put(_EOF)

    threading.Thread(target=read, name=f"output of {proc.pid}", daemon=True).start()
    while True:
        try:
            item = lines.get(timeout=poll)
        except queue.Empty:
            continue
        if item is _EOF:
            return
        yield item  # type: ignore[misc]


def wait_exit(proc: subprocess.Popen[Any], poll: float = 0.2) -> int:
    """``proc.wait()`` in short steps, for the same reason: Ctrl-C is acted on within ``poll`` seconds."""
    while True:
        try:
            return proc.wait(timeout=poll)
        except subprocess.TimeoutExpired:
            continue
