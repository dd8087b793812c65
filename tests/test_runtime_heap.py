"""`serve` freezes the start-up heap, so full garbage collections skip it; later garbage is still freed."""

from __future__ import annotations

import gc

from enginehouse.server.app import create_app  # noqa: F401  (the server's modules, as serve has them)
from enginehouse.server.runtime import settle_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_start_up_objects_leave_the_collections_and_new_garbage_is_still_collected() -> None:
    try:
        settle_heap()
        assert gc.get_freeze_count() > 10_000
        assert len(gc.get_objects(generation=2)) < 1_000  # what a full collection still walks
        _Node()
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
