"""The content-addressed model store, laid out exactly like Ollama's (blobs/ and manifests/).

Crash safety rests on two rules: every file is written under tmp/, fsynced and then renamed
into place (so a path either holds complete content or does not exist), and a manifest is
written only after every blob it names is in place. A process killed at any point therefore
leaves at worst orphan files in tmp/ (removed by :meth:`Store.clean_tmp`) or an unreferenced
blob, never a model that points at something missing or partial.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enginehouse.errors import (
    BlobNotFound,
    EnginehouseError,
    InvalidDigest,
    ModelNotFound,
    StoreError,
)
from enginehouse.store.fsio import (
    CHUNK,
    HashingWriter,
    atomic_write_bytes,
    fsync_dir,
    hash_file,
    make_dirs,
    make_readable,
)
from enginehouse.store.gguf_info import GGUFInfo, read_gguf_info
from enginehouse.store.names import ModelName, as_model_name, digest_filename, parse_digest

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MAX_MANIFEST_BYTES = 4 << 20  # manifests are tiny; a huge one is not a manifest


@dataclass
class ModelRecord:
    name: ModelName
    manifest: dict[str, Any]
    manifest_digest: str
    model_path: Path
    model_digest: str
    config: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    license: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    adapters: list[Path] = field(default_factory=list)
    projectors: list[Path] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    size: int = 0
    modified_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def adapter_digests(self) -> list[str]:
        """The adapters' blob digests, in the manifest's order (the order of ``adapters``)."""
        layers = self.manifest.get("layers", [])
        return [layer["digest"] for layer in layers if layer.get("mediaType") == MEDIA_ADAPTER]


def manifest_digests(manifest: Any) -> list[str]:
    """Every blob digest a manifest names (config first), validated; StoreError if malformed."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers", []), list):
        raise StoreError("manifest is not a JSON object with a 'layers' list")
    digests: list[str] = []
    cfg = manifest.get("config")
    if cfg is not None:
        if not isinstance(cfg, dict) or "digest" not in cfg:
            raise StoreError("manifest config has no digest")
        digests.append(parse_digest(cfg["digest"]))
    for layer in manifest.get("layers", []):
        if not isinstance(layer, dict) or "digest" not in layer:
            raise StoreError("manifest layer has no digest")
        digests.append(parse_digest(layer["digest"]))
    return digests


def gguf_config(info: GGUFInfo) -> dict[str, Any]:
    """The config blob Ollama writes for a GGUF model (without its ``rootfs``)."""
    return {
        "model_format": "gguf",
        "model_family": info.architecture,
        "model_families": [info.architecture],
        "model_type": info.parameter_size,
        "file_type": info.file_type,
        "architecture": _go_arch(),
        "os": "windows" if sys.platform == "win32" else sys.platform,
    }


def _go_arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


class Store:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"
        self.external_dir = self.root / "external"
        self.tmp_dir = self.root / "tmp"
        # resolve() is on every request's path: records are cached by the name as asked and reused
        # while the manifest's (mtime, size, inode) stay the same and its blobs exist.
        self._resolved: dict[ModelName | str, _Resolved] = {}

    # -- blobs ------------------------------------------------------------------------------------

    def _internal_path(self, digest: str) -> Path:
        return self.blobs_dir / digest_filename(digest)

    def _external_record(self, digest: str) -> Path:
        return self.external_dir / (digest_filename(digest) + ".json")

    def blob_path(self, digest: str) -> Path:
        """The file holding a blob: internal, or an external file that has not changed since."""
        d = parse_digest(digest)
        internal = self._internal_path(d)
        if internal.is_file():
            return internal
        record = self._external_record(d)
        try:
            ref = json.loads(record.read_bytes())
        except FileNotFoundError:
            raise BlobNotFound(f"blob {d} not found") from None
        except (OSError, ValueError) as e:
            raise BlobNotFound(f"blob {d}: its external reference is unreadable") from e
        if not (
            isinstance(ref, dict)
            and isinstance(ref.get("path"), str)
            and isinstance(ref.get("size"), int)
            and isinstance(ref.get("mtime_ns"), int)
            and os.path.isabs(ref["path"])
        ):
            raise BlobNotFound(f"blob {d}: its external reference is malformed")
        path = Path(ref["path"])
        try:
            st = path.stat()
        except OSError:
            raise BlobNotFound(f"blob {d}: external file {path.name} is gone") from None
        if st.st_size != ref["size"] or st.st_mtime_ns != ref["mtime_ns"]:
            raise BlobNotFound(f"blob {d}: external file {path.name} changed since it was recorded")
        return path

    def has_blob(self, digest: str) -> bool:
        try:
            self.blob_path(digest)
        except BlobNotFound:
            return False
        return True

    def _new_tmp(self, hint: str) -> Path:
        make_dirs(self.tmp_dir)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=f"{hint}.", suffix=".partial")
        make_readable(fd)
        os.close(fd)
        return Path(name)

    def _commit_blob(self, tmp: Path, digest: str) -> None:
        make_dirs(self.blobs_dir)
        os.replace(tmp, self._internal_path(digest))
        fsync_dir(self.blobs_dir)
        # An internal copy supersedes an external reference.
        with contextlib.suppress(FileNotFoundError):
            self._external_record(digest).unlink()

    def _try_link(self, src: Path, expected: str | None) -> tuple[str, int] | None:
        """Hard-link ``src`` into blobs/; None when the file system does not allow it."""
        tmp = self._new_tmp("link")
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            return None
        try:
            # Hash the linked name: that is exactly the inode the store will keep.
            digest, size = hash_file(tmp)
            if expected is not None and digest != expected:
                raise InvalidDigest(f"digest mismatch for {src}: expected {expected}, got {digest}")
            if self._internal_path(digest).is_file():
                tmp.unlink()
                return digest, size
            with open(tmp, "rb") as fh:  # the data may be fresh in the page cache only
                os.fsync(fh.fileno())
            self._commit_blob(tmp, digest)
            return digest, size
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    @staticmethod
    def _source_file(path: Path | str) -> Path:
        src = Path(path)
        if not src.is_file():
            raise StoreError(f"{src} is not a regular file")
        return src

    def add_blob_from_file(
        self, path: Path | str, *, expected_digest: str | None = None, link: bool = True
    ) -> tuple[str, int]:
        """Add a file's content as a blob (hard link when possible, else a copy); (digest, size)."""
        expected = parse_digest(expected_digest) if expected_digest is not None else None
        src = self._source_file(path)
        if link and (done := self._try_link(src, expected)) is not None:
            return done
        digest, size = hash_file(src)
        if expected is not None and digest != expected:
            raise InvalidDigest(f"digest mismatch for {src}: expected {expected}, got {digest}")
        if self._internal_path(digest).is_file():
            return digest, size
        with self.blob_writer(digest) as out, open(src, "rb", buffering=0) as fh:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while n := fh.readinto(buf):
                out.write(view[:n])
        return digest, size

    def add_external_blob(self, path: Path | str, *, expected_digest: str | None = None) -> tuple[str, int]:
        """Make a file outside the store usable as a blob without copying it.

        A hard link is used when possible (it needs no bookkeeping); otherwise a reference with the
        file's size and mtime is recorded after the content hash has been verified.
        """
        expected = parse_digest(expected_digest) if expected_digest is not None else None
        src = self._source_file(path)
        if (done := self._try_link(src, expected)) is not None:
            return done
        before = src.stat()
        digest, size = hash_file(src)
        after = src.stat()
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise StoreError(f"{src} changed while it was being hashed")
        if expected is not None and digest != expected:
            raise InvalidDigest(f"digest mismatch for {src}: expected {expected}, got {digest}")
        if self._internal_path(digest).is_file():
            return digest, size
        ref = {"path": os.path.abspath(src), "size": after.st_size, "mtime_ns": after.st_mtime_ns}
        atomic_write_bytes(self._external_record(digest), json.dumps(ref).encode(), tmp_dir=self.tmp_dir)
        return digest, size

    def add_blob_bytes(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self._internal_path(digest).is_file():
            with self.blob_writer(digest) as out:
                out.write(data)
        return digest, len(data)

    @contextlib.contextmanager
    def blob_writer(self, expected_digest: str | None = None) -> Iterator[HashingWriter]:
        """Yield a writable file in tmp/; on clean exit verify, fsync and move it into blobs/.

        After the block the writer's ``digest`` and ``size`` tell what was stored. On an exception
        or a digest mismatch the partial file is deleted.
        """
        expected = parse_digest(expected_digest) if expected_digest is not None else None
        tmp = self._new_tmp("blob")
        try:
            with open(tmp, "wb") as fh:
                writer = HashingWriter(fh)
                yield writer
                fh.flush()
                os.fsync(fh.fileno())
            digest = "sha256:" + writer.hexdigest()
            if expected is not None and digest != expected:
                raise InvalidDigest(f"digest mismatch: expected {expected}, got {digest}")
            if self._internal_path(digest).is_file():
                tmp.unlink()
            else:
                self._commit_blob(tmp, digest)
            writer.digest = digest
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    # -- manifests --------------------------------------------------------------------------------

    def _manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.manifest_parts)

    def find_manifest(self, name: ModelName) -> Path | None:
        path = self._manifest_path(name)
        if path.is_file():
            return path
        # Tags keep their case on disk; look them up case-insensitively as Ollama does.
        with contextlib.suppress(OSError):
            for entry in os.scandir(path.parent):
                if entry.name.lower() == name.tag.lower() and entry.is_file():
                    return Path(entry.path)
        return None

    def _iter_manifests(self) -> Iterator[tuple[ModelName, Path]]:
        """Every manifest file at manifests/<host>/<ns>/<model>/<tag> with a valid name."""

        def subdirs(p: Path) -> list[os.DirEntry[str]]:
            try:
                return [e for e in os.scandir(p) if e.is_dir(follow_symlinks=False)]
            except OSError:
                return []

        for host in subdirs(self.manifests_dir):
            for ns in subdirs(Path(host.path)):
                for model in subdirs(Path(ns.path)):
                    try:
                        tags = [e for e in os.scandir(model.path) if e.is_file()]
                    except OSError:
                        continue
                    for tag in tags:
                        try:
                            yield ModelName(host.name, ns.name, model.name, tag.name), Path(tag.path)
                        except EnginehouseError:
                            log.warning("ignoring manifest with an invalid name: %s", tag.path)

    def _load(self, path: Path, label: str) -> tuple[dict[str, Any], bytes]:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_MANIFEST_BYTES + 1)
        except OSError as e:
            raise StoreError(f"cannot read the manifest of {label}: {e.strerror or 'unreadable'}") from e
        if len(data) > MAX_MANIFEST_BYTES:
            raise StoreError(f"the manifest of {label} is corrupt: too large")
        try:
            manifest = json.loads(data)
        except ValueError as e:
            raise StoreError(f"the manifest of {label} is corrupt: {e}") from e
        if not isinstance(manifest, dict):
            raise StoreError(f"the manifest of {label} is corrupt: not a JSON object")
        return manifest, data

    def _locate(self, name: ModelName | str) -> tuple[ModelName, Path]:
        mn = as_model_name(name)
        path = self.find_manifest(mn)
        if path is None:
            shown = name if isinstance(name, str) else mn.display
            raise ModelNotFound(shown, self.suggest(shown))
        if path.name != mn.tag:  # found case-insensitively: report the name as stored
            mn = ModelName(mn.host, mn.namespace, mn.model, path.name)
        return mn, path

    def _read(self, name: ModelName | str) -> tuple[ModelName, Path, dict[str, Any], bytes]:
        mn, path = self._locate(name)
        manifest, data = self._load(path, mn.display)
        return mn, path, manifest, data

    def read_manifest(self, name: ModelName | str) -> dict[str, Any]:
        return self._read(name)[2]

    def manifest_bytes(self, name: ModelName | str) -> tuple[ModelName, bytes]:
        """The name as stored and its manifest byte for byte (what a push sends: its digest is kept)."""
        mn, _, _, data = self._read(name)
        return mn, data

    def write_manifest_bytes(self, name: ModelName | str, data: bytes) -> None:
        """Store a manifest byte for byte (its digest stays the same) once all its blobs exist."""
        mn = as_model_name(name)
        try:
            manifest = json.loads(data)
        except ValueError as e:
            raise StoreError(f"manifest for {mn.display} is not valid JSON: {e}") from e
        for d in manifest_digests(manifest):
            if not self.has_blob(d):
                raise StoreError(f"cannot write manifest for {mn.display}: blob {d} is not in the store")
        atomic_write_bytes(self._manifest_path(mn), data, tmp_dir=self.tmp_dir)

    def write_manifest(self, name: ModelName | str, manifest: dict[str, Any]) -> None:
        self.write_manifest_bytes(name, json.dumps(manifest, separators=(",", ":")).encode())

    def _record(self, mn: ModelName, path: Path, manifest: dict[str, Any], data: bytes) -> ModelRecord:
        label = mn.display

        def blob_of(digest: str) -> Path:
            try:
                return self.blob_path(digest)
            except BlobNotFound as e:
                raise BlobNotFound(f"model {label}: {e.message}") from e

        def size_of(entry: dict[str, Any]) -> int:
            n = entry.get("size")
            return n if isinstance(n, int) and not isinstance(n, bool) else 0

        manifest_digests(manifest)  # validates every digest before any is used as a path
        cfg = manifest.get("config")
        config: dict[str, Any] = {}
        size = 0
        if isinstance(cfg, dict):
            size += size_of(cfg)
            try:
                loaded = json.loads(blob_of(cfg["digest"]).read_bytes())
            except ValueError as e:
                raise StoreError(f"model {label}: config blob is not JSON") from e
            config = loaded if isinstance(loaded, dict) else {}
        rec: dict[str, Any] = {"params": {}, "adapters": [], "projectors": [], "messages": []}
        licenses: list[str] = []
        model: tuple[Path, str] | None = None
        for layer in manifest.get("layers", []):
            media, digest = layer.get("mediaType", ""), parse_digest(layer["digest"])
            size += size_of(layer)
            blob = blob_of(digest)
            if media == MEDIA_MODEL:
                if model is None:
                    model = (blob, digest)
            elif media in (MEDIA_TEMPLATE, MEDIA_SYSTEM):
                rec[media.rsplit(".", 1)[1]] = blob.read_bytes().decode("utf-8", errors="replace")
            elif media == MEDIA_LICENSE:
                licenses.append(blob.read_bytes().decode("utf-8", errors="replace"))
            elif media == MEDIA_ADAPTER:
                rec["adapters"].append(blob)
            elif media == MEDIA_PROJECTOR:
                rec["projectors"].append(blob)
            elif media in (MEDIA_PARAMS, MEDIA_MESSAGES):
                key = "params" if media == MEDIA_PARAMS else "messages"
                try:
                    value = json.loads(blob.read_bytes())
                except ValueError as e:
                    raise StoreError(f"model {label}: {key} layer is not JSON") from e
                if not isinstance(value, dict if key == "params" else list):
                    raise StoreError(f"model {label}: {key} layer has the wrong shape")
                rec[key] = value
        if model is None:
            raise StoreError(f"model {label} has no model layer")
        mtime = path.stat().st_mtime
        return ModelRecord(
            name=mn,
            manifest=manifest,
            manifest_digest="sha256:" + hashlib.sha256(data).hexdigest(),
            model_path=model[0],
            model_digest=model[1],
            config=config,
            license="\n\n".join(licenses) if licenses else None,
            size=size,
            modified_at=datetime.fromtimestamp(mtime, tz=UTC),
            **rec,
        )

    def resolve(self, name: ModelName | str) -> ModelRecord:
        """The record for ``name``, read again only when its manifest changed on disk or one of its
        blobs is gone (a few stat calls: this runs on every request)."""
        hit = self._resolved.get(name)
        if hit is not None and _unchanged(hit):
            return hit[3]
        mn, path = self._locate(name)
        try:
            signature = _signature(str(path))
        except OSError:
            signature = None
        manifest, data = self._load(path, mn.display)
        record = self._record(mn, path, manifest, data)
        if signature is not None:
            if len(self._resolved) >= 1024:  # spellings of names are the keys: keep it bounded
                self._resolved.clear()
            blobs = tuple(str(self.blob_path(d)) for d in manifest_digests(manifest))
            self._resolved[name] = (str(path), signature, blobs, record)
        return record

    def list_models(self) -> list[ModelRecord]:
        records = []
        for mn, path in self._iter_manifests():
            try:
                manifest, data = self._load(path, mn.display)
                records.append(self._record(mn, path, manifest, data))
            except (EnginehouseError, OSError, ValueError, KeyError, TypeError) as e:
                log.warning("skipping model %s: %s", mn.display, e)
        records.sort(key=lambda r: r.modified_at, reverse=True)
        return records

    def suggest(self, name: str, n: int = 3) -> list[str]:
        names = sorted({mn.display for mn, _ in self._iter_manifests()})
        return difflib.get_close_matches(name, names, n=n, cutoff=0.5)

    # -- changes ----------------------------------------------------------------------------------

    def remove(self, name: ModelName | str) -> None:
        """Delete a model, then the blobs (or external references) no other model uses."""
        mn, path = self._locate(name)
        try:
            candidates = set(manifest_digests(self._load(path, mn.display)[0]))
        except EnginehouseError:
            candidates = set()  # corrupt, yet removable: nothing trustworthy to collect
        path.unlink()
        fsync_dir(path.parent)
        parent = path.parent
        while parent != self.manifests_dir and parent.is_relative_to(self.manifests_dir):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        for _, other in self._iter_manifests():
            try:
                candidates -= set(manifest_digests(self._load(other, str(other))[0]))
            except EnginehouseError:
                continue
        for d in candidates:
            for p in (self._internal_path(d), self._external_record(d)):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def copy(self, src: ModelName | str, dst: ModelName | str) -> None:
        dst_name = as_model_name(dst)
        _, _, _, data = self._read(src)
        self.write_manifest_bytes(dst_name, data)

    def import_gguf(
        self,
        path: Path | str,
        name: ModelName | str,
        *,
        link: bool = True,
        template: str | None = None,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        projector: Path | str | None = None,
    ) -> ModelRecord:
        """Add a local GGUF file as a model: blobs first, manifest last. ``projector``: a vision
        projector GGUF (llama.cpp's mmproj), kept as Ollama's projector layer."""
        mn = as_model_name(name)
        info = read_gguf_info(path)  # refuses non-GGUF input before anything is written
        digest, size = self.add_blob_from_file(path, link=link)
        if size != info.size:
            raise StoreError(f"{path} changed while it was being imported")
        layers = [{"mediaType": MEDIA_MODEL, "digest": digest, "size": size}]
        if projector is not None:
            read_gguf_info(projector)
            p_digest, p_size = self.add_blob_from_file(projector, link=link)
            layers.append({"mediaType": MEDIA_PROJECTOR, "digest": p_digest, "size": p_size})
        extra: list[tuple[str, bytes]] = []
        if template:
            extra.append((MEDIA_TEMPLATE, template.encode()))
        if system:
            extra.append((MEDIA_SYSTEM, system.encode()))
        if params:
            extra.append((MEDIA_PARAMS, json.dumps(params).encode()))
        for media, blob in extra:
            d, n = self.add_blob_bytes(blob)
            layers.append({"mediaType": media, "digest": d, "size": n})
        config = {
            **gguf_config(info),
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        }
        cfg_digest, cfg_size = self.add_blob_bytes(json.dumps(config, separators=(",", ":")).encode())
        self.write_manifest(
            mn,
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": cfg_digest, "size": cfg_size},
                "layers": layers,
            },
        )
        return self.resolve(mn)

    def prune(self, *, older_than: float = 3600.0) -> tuple[int, int]:
        """Delete what no model uses: unreferenced blobs and external references, and leftover tmp
        and partial-download files. Only files older than ``older_than`` seconds go, since younger
        ones may belong to a pull or import in progress. Returns (files removed, bytes freed)."""
        referenced: set[str] = set()
        for _, path in self._iter_manifests():
            try:
                referenced |= set(manifest_digests(self._load(path, str(path))[0]))
            except EnginehouseError:
                continue
        cutoff = time.time() - older_than
        removed = freed = 0
        for folder, suffix in ((self.blobs_dir, ""), (self.external_dir, ".json")):
            for entry in _entries(folder):
                try:
                    digest = parse_digest(entry.name.removesuffix(suffix))
                except EnginehouseError:
                    continue  # not ours to judge
                if digest not in referenced:
                    removed, freed = _unlink_if_old(entry, cutoff, removed, freed)
        for folder in (self.tmp_dir, self.root / "partial"):
            for entry in _entries(folder):
                removed, freed = _unlink_if_old(entry, cutoff, removed, freed)
        return removed, freed

    def clean_tmp(self, older_than: float = 0.0) -> int:
        """Remove leftover partial files (those older than ``older_than`` seconds); returns a count."""
        removed = 0
        cutoff = time.time() - older_than
        try:
            entries = list(os.scandir(self.tmp_dir))
        except OSError:
            return 0
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                # ctime too: a hard-linked tmp file carries its source's (possibly old) mtime.
                if not entry.is_dir(follow_symlinks=False) and max(st.st_mtime, st.st_ctime) <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
        return removed


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return [e for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _unlink_if_old(entry: os.DirEntry[str], cutoff: float, removed: int, freed: int) -> tuple[int, int]:
    try:
        st = entry.stat(follow_symlinks=False)
        # ctime too: a hard-linked file carries its source's (possibly old) mtime.
        if max(st.st_mtime, st.st_ctime) > cutoff:
            return removed, freed
        os.unlink(entry.path)
    except OSError:
        return removed, freed
    # A hard-linked blob (the bundled model, an indexed Ollama store) frees nothing while linked.
    return removed + 1, freed + (st.st_size if st.st_nlink <= 1 else 0)


#: resolve()'s cache entry: (manifest path, its signature, blob paths, record)
_Resolved = tuple[str, tuple[int, int, int], tuple[str, ...], ModelRecord]


def _signature(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


def _unchanged(hit: _Resolved) -> bool:
    """A cached resolve still holds: the same manifest file, unchanged, and every blob still there."""
    path, signature, blobs, _ = hit
    try:
        return _signature(path) == signature and all(map(os.path.exists, blobs))
    except OSError:
        return False
