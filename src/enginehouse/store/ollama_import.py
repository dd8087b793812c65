"""Index an existing Ollama model store in place: hard links or references, never copies.

The Ollama directory is untrusted input and is only ever read: names must pass
:class:`ModelName` validation, manifests must parse, and every blob is hashed once and must match
its file name before our store points at it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from enginehouse.errors import EnginehouseError, StoreError
from enginehouse.store.names import ModelName, digest_filename
from enginehouse.store.store import MAX_MANIFEST_BYTES, Store, manifest_digests

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)  # written into our store
    unchanged: list[str] = field(default_factory=list)  # already there, byte for byte
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name or path, reason)
    blobs_linked: int = 0
    blobs_referenced: int = 0


def default_ollama_models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$OLLAMA_MODELS`` if set, else ``~/.ollama/models`` (where ``ollama serve`` keeps models)."""
    env = os.environ if environ is None else environ
    value = env.get("OLLAMA_MODELS")
    if value:
        return Path(value).expanduser()
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".ollama" / "models"


def _manifest_files(root: Path) -> list[Path]:
    found = []
    for dirpath, _dirs, files in os.walk(root):  # does not follow directory symlinks
        found.extend(Path(dirpath) / f for f in files)
    return sorted(found)


def import_ollama_store(store: Store, ollama_models_dir: Path, *, overwrite: bool = False) -> ImportReport:
    """Make every valid model of an Ollama store usable from ``store``.

    A model whose name already exists in ``store`` with different content is skipped unless
    ``overwrite``. Blobs shared between models are verified once.
    """
    src = Path(ollama_models_dir)
    manifests = src / "manifests"
    if not manifests.is_dir():
        raise StoreError(f"{src} is not an Ollama model directory (no manifests/ in it)")
    report = ImportReport()
    verified: dict[str, str | None] = {}  # digest -> None when usable, else the reason it is not

    for path in _manifest_files(manifests):
        rel = path.relative_to(manifests)
        label = rel.as_posix()
        if len(rel.parts) != 4:
            report.skipped.append((label, "not at manifests/<host>/<namespace>/<model>/<tag>"))
            continue
        host, ns, model, tag = rel.parts
        try:
            if any(":" in p for p in (ns, model, tag)):
                raise StoreError("':' in a name part")
            name = ModelName.parse(f"{host}/{ns}/{model}:{tag}")
        except EnginehouseError as e:
            report.skipped.append((label, f"invalid name: {e}"))
            continue
        label = name.display
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_MANIFEST_BYTES + 1)
            if len(data) > MAX_MANIFEST_BYTES:
                raise StoreError("manifest too large")
            digests = manifest_digests(json.loads(data))
        except (OSError, ValueError, EnginehouseError) as e:
            report.skipped.append((label, f"unreadable manifest: {e}"))
            continue

        problem = None
        for d in digests:
            if d not in verified:
                verified[d] = _adopt_blob(store, src / "blobs" / digest_filename(d), d, report)
            if verified[d] is not None:
                problem = verified[d]
                break
        if problem is not None:
            report.skipped.append((label, problem))
            continue

        try:
            existing = store.find_manifest(name)
            if existing is not None and existing.read_bytes() == data:
                report.unchanged.append(label)
                continue
            if existing is not None and not overwrite:
                report.skipped.append((label, "a different model of that name is already in the store"))
                continue
            store.write_manifest_bytes(name, data)
        except (OSError, EnginehouseError) as e:
            report.skipped.append((label, f"could not write the manifest: {e}"))
            continue
        report.imported.append(label)
    return report


def _adopt_blob(store: Store, path: Path, digest: str, report: ImportReport) -> str | None:
    """Link or reference one Ollama blob into ``store``; None on success, else why not."""
    if store.has_blob(digest):
        return None
    if not path.is_file():
        return f"blob {digest} is missing"
    try:
        internal_before = store._internal_path(digest).is_file()
        store.add_external_blob(path, expected_digest=digest)
    except EnginehouseError as e:
        log.warning("not importing blob %s: %s", path, e)
        return f"blob {digest} is unusable: {e.message}"
    except OSError as e:
        return f"blob {digest} could not be read: {e}"
    if store._internal_path(digest).is_file() and not internal_before:
        report.blobs_linked += 1
    else:
        report.blobs_referenced += 1
    return None
