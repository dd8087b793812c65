"""How much a download still needs, and whether the store's disk has room for it."""

from __future__ import annotations

import shutil

from enginehouse.errors import StoreError
from enginehouse.store.download import tuning
from enginehouse.store.download.resume import blob_paths, load_state
from enginehouse.store.names import parse_digest
from enginehouse.store.store import Store

__all__ = ["check_free_space", "pending_bytes"]


def pending_bytes(store: Store, digest: str, size: int) -> int:
    """Bytes still to fetch for a blob: 0 when stored, less than ``size`` when a partial download exists."""
    d = parse_digest(digest)
    if store.has_blob(d):
        return 0
    data_path, state_path, _ = blob_paths(store, d)
    parts = load_state(data_path, state_path, d, size)
    return size - sum(p.done for p in parts) if parts is not None else size


def check_free_space(store: Store, needed: int) -> None:
    """StoreError unless the store's file system has ``needed`` bytes (plus a margin) free."""
    if needed <= 0:
        return
    probe = store.root
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + tuning.SPACE_MARGIN:
        raise StoreError(
            f"not enough disk space in {store.root}: the download needs {_size(needed)}"
            f" (+{_size(tuning.SPACE_MARGIN)} margin) but only {_size(free)} is free"
        )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover
