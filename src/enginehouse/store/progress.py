"""Progress callbacks of pulls and creates: plain functions or coroutines, both accepted."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

Progress = Callable[[dict[str, Any]], Awaitable[None] | None]


def emitter(progress: Progress | None) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """An async ``emit(event)`` that calls ``progress`` and awaits it when it returns an awaitable."""

    async def emit(event: dict[str, Any]) -> None:
        if progress is not None:
            result = progress(event)
            if inspect.isawaitable(result):
                await result

    return emit
