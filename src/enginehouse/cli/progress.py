"""Progress people can see everywhere: bars on a terminal, plain flushed lines anywhere else.

Every long CLI path (the llama-server build, the converter's install, pulls, create, convert) reports
through one :class:`Reporter`. On a terminal it draws rich bars. When the output is a pipe or a log file
(CI, ``scripts/setup.sh | tee``, a service manager) a bar would print nothing until the end, so it writes
one line when a stage starts, one per 10% of it, one every ``every_s`` seconds while a stage runs (a
heartbeat thread keeps that promise for stages that report nothing for minutes), and one when it ends.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text

StageCallback = Callable[[str, float, float | None], None]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


@dataclass
class _Item:
    label: str
    unit: str  # "bytes", or "" for stages measured in steps or percent
    started: float
    done: float = 0.0
    total: float | None = None
    last_line: float = 0.0  # when its last plain line was written
    last_decile: int = -1  # the last 10% step written
    finished: bool = False

    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None


class _Amount(ProgressColumn):
    """Bytes, then speed, for downloads; a percentage for the stages of a build."""

    def __init__(self) -> None:
        super().__init__()
        self._download, self._speed = DownloadColumn(), TransferSpeedColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "bytes":
            return Text.assemble(self._download.render(task), " ", self._speed.render(task))
        return Text("" if task.total is None else f"{task.percentage:>3.0f}%", style="progress.percentage")


class Reporter:
    """One command's progress display; use it as a context manager.

    ``update(key, done, total)`` moves one item (a build stage, a blob); ``note(text)`` writes a line;
    ``stage`` is the ``progress(stage, done, total)`` callback of the engine installers; ``pull_event``
    takes the Ollama-shaped progress dicts of pulls and creates.
    """

    def __init__(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        sequential: bool = False,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        every_s: float = 30.0,
        width: int = 34,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.labels = dict(labels or {})
        self.sequential = sequential  # stages: a new one starting means the one before is over
        self.stream = stream if stream is not None else sys.stderr
        self.console = Console(file=self.stream)
        if interactive is None:
            interactive = self.console.is_terminal and not self.console.is_dumb_terminal
        self.interactive = interactive
        self.every_s = every_s
        self.width = width
        self.clock = clock
        self._items: dict[str, _Item] = {}
        self._lock = threading.Lock()
        self._bars: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> Reporter:
        if self.interactive:
            self._bars = Progress(
                # markup off: a path or a log line may hold "[/...]", which rich would reject
                TextColumn(f"{{task.description:<{self.width}}}", markup=False),
                BarColumn(),
                _Amount(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[detail]}", style="dim", markup=False),
                console=self.console,
            )
            self._bars.start()
        else:
            self._heartbeat = threading.Thread(target=self._beat, name="progress heartbeat", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._bars is not None:
            self._bars.stop()
        elif exc_type is None:  # a stage with no known end (a download without a size) ends here
            with self._lock:
                for key, item in self._items.items():
                    if not item.finished:
                        self._finish(key, item)

    # -- what callers report ------------------------------------------------------------------------

    def update(
        self,
        key: str,
        done: float,
        total: float | None,
        *,
        label: str | None = None,
        unit: str = "",
        detail: str = "",
    ) -> None:
        with self._lock:
            now = self.clock()
            item = self._items.get(key)
            new = item is None
            if item is None:
                if self.sequential:
                    for other_key, other in self._items.items():
                        if not other.finished:
                            self._finish(other_key, other)
                item = _Item(label or self.labels.get(key, key), unit, now, last_line=now)
                self._items[key] = item
                if self._bars is not None:
                    self._tasks[key] = self._bars.add_task(item.label, total=total, unit=unit, detail="")
            item.done, item.total = done, total
            if self._bars is not None:
                self._bars.update(self._tasks[key], completed=done, total=total, detail=detail[:60])
                return
            if item.finished:
                return
            fraction = item.fraction()
            if fraction is not None and fraction >= 1.0:  # (a blob already there needs no "started")
                self._finish(key, item)
                return
            decile = -1 if fraction is None else math.floor(fraction * 10)
            if new:
                self._line(f"{item.label}: started")
                item.last_decile = decile
            elif decile > max(item.last_decile, 0) or now - item.last_line >= self.every_s:
                self._line(self._describe(item, now))
                item.last_line = now
                item.last_decile = max(item.last_decile, decile)

    def stage(self, stage: str, done: float, total: float | None) -> None:
        """The engine installers' ``progress(stage, done, total)`` callback."""
        self.update(stage, done, total, unit="bytes" if stage == "download" else "")

    def pull_event(self, event: Mapping[str, Any]) -> None:
        """A pull's or create's progress dict: a blob's bytes, or a status line."""
        digest = event.get("digest")
        if digest and event.get("total"):
            label = str(event.get("status", digest))
            self.update(digest, event.get("completed", 0), event["total"], label=label, unit="bytes")
        else:
            self.note(str(event.get("status", "")))

    def note(self, text: str, *, style: str | None = None) -> None:
        with self._lock:
            if self._bars is not None:
                self._bars.console.print(text, style=style, markup=False, highlight=False)
            else:
                self._line(text)

    # -- plain lines --------------------------------------------------------------------------------

    def _describe(self, item: _Item, now: float) -> str:
        elapsed = human_seconds(now - item.started)
        fraction = item.fraction()
        if fraction is None:
            amount = human_bytes(item.done) if item.unit == "bytes" and item.done else "still running"
        elif item.unit == "bytes":
            amount = f"{fraction:.0%} of {human_bytes(item.total or 0)}"
        else:
            amount = f"{fraction:.0%}"
        return f"{item.label}: {amount} ({elapsed})"

    def _finish(self, key: str, item: _Item) -> None:
        item.finished = True
        if self._bars is None:
            size = f", {human_bytes(item.done)}" if item.unit == "bytes" and item.done else ""
            self._line(f"{item.label}: done ({human_seconds(self.clock() - item.started)}{size})")

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _beat(self) -> None:
        """Write a line for each running item that has been quiet for ``every_s`` seconds."""
        while not self._stop.wait(min(self.every_s / 4, 5.0)):
            with self._lock:
                now = self.clock()
                for item in self._items.values():
                    if not item.finished and now - item.last_line >= self.every_s:
                        self._line(self._describe(item, now))
                        item.last_line = now


@contextmanager
def stage_progress(labels: Mapping[str, str], width: int = 34) -> Iterator[Reporter]:
    """A reporter for the engine installers' sequential stages."""
    with Reporter(labels=labels, sequential=True, width=width) as reporter:
        yield reporter
