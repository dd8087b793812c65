"""``enginehouse create`` and Ollama's ``/api/create``: build a model from a Modelfile or a request.

Everything a create needs is resolved and validated first (the base model, GGUF files, adapters,
parameters), then blobs are written, and the manifest goes last, so a failed create leaves at most
unreferenced blobs behind, never a half-made model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enginehouse.errors import BlobNotFound, InvalidName, InvalidRequest, ModelNotFound
from enginehouse.store.gguf_info import GGUFInfo, read_gguf_info
from enginehouse.store.modelfile import (
    Modelfile,
    ModelfileError,
    parse,
    validate_messages,
    validate_parameters,
)
from enginehouse.store.names import ModelName, as_model_name, digest_filename, parse_digest
from enginehouse.store.store import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MEDIA_ADAPTER,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    ModelRecord,
    Store,
    gguf_config,
)

Progress = Callable[[dict[str, Any]], None]

HF_MESSAGE = (
    "Hugging Face directories need the vllm engine, or a conversion to GGUF first: "
    "`enginehouse convert DIR NAME` (after `enginehouse engines install converter`)"
)
_DIGEST_RE = re.compile(r"@?(sha256[:-][0-9a-fA-F]{64})")


@dataclass
class _Source:
    """Where a model (or adapter) layer comes from: a file to import or a blob already stored."""

    path: Path | None = None
    digest: str | None = None
    info: GGUFInfo | None = None


@dataclass
class _Plan:
    model: _Source | None = None  # None: the base model's layers are reused
    base_layers: list[dict[str, Any]] = field(default_factory=list)
    base_config: dict[str, Any] = field(default_factory=dict)
    inherited: dict[str, Any] = field(default_factory=dict)


def _noop(_: dict[str, Any]) -> None:
    pass


def _looks_like_path(s: str) -> bool:
    return (
        s.startswith((".", "/", "~", "\\"))
        or "\\" in s
        or s.lower().endswith((".gguf", ".bin", ".safetensors"))
    )


def _expand(s: str, base_dir: Path | None) -> Path:
    p = Path(s).expanduser()
    if not p.is_absolute():
        p = (base_dir or Path.cwd()) / p
    return p


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _gguf_in_dir(path: Path) -> Path:
    if _is_hf_dir(path):
        raise InvalidRequest(HF_MESSAGE)
    ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return ggufs[0]
    if not ggufs:
        raise InvalidRequest(f"{path} is a directory with no GGUF file (and not a Hugging Face model)")
    raise InvalidRequest(
        f"{path} holds {len(ggufs)} GGUF files; name the one to use: " + ", ".join(p.name for p in ggufs[:5])
    )


def _file_source(path: Path, what: str) -> _Source:
    if path.is_dir():
        path = _gguf_in_dir(path)
    if path.suffix.lower() == ".safetensors":
        raise InvalidRequest(HF_MESSAGE)
    if not path.is_file():
        raise InvalidRequest(f"{what} {path}: not a regular file")
    return _Source(path=path, info=read_gguf_info(path))


def _blob_source(store: Store, digest: str, what: str) -> _Source:
    d = parse_digest(digest)
    try:
        path = store.blob_path(d)
    except BlobNotFound:
        raise BlobNotFound(
            f"{what} blob {d} is not in the store; upload it first (POST /api/blobs/{d})"
        ) from None
    return _Source(digest=d, info=read_gguf_info(path))


PATHS_REFUSED = (
    "file paths are not accepted here: upload the file (POST /api/blobs/sha256:<digest>) "
    "and refer to it by its digest"
)


def _own_blob(store: Store, path: Path) -> str | None:
    """The digest when ``path`` is one of the store's own blobs (what ``show --modelfile`` prints)."""
    try:
        in_blobs = path.resolve().parent == store.blobs_dir.resolve()
    except OSError:
        return None
    m = _DIGEST_RE.fullmatch(path.name)
    return m.group(1) if in_blobs and m and path.is_file() else None


def _resolve_file_or_blob(
    store: Store, ref: str, base_dir: Path | None, what: str, allow_paths: bool
) -> _Source:
    """An ADAPTER (or a FROM that is not a model name): a blob digest or a path."""
    if m := _DIGEST_RE.fullmatch(ref.strip()):
        return _blob_source(store, m.group(1), what)
    path = _expand(ref, base_dir)
    if digest := _own_blob(store, path):
        return _blob_source(store, digest, what)
    if not allow_paths:
        raise InvalidRequest(f"{what} {ref}: {PATHS_REFUSED}")
    if not path.exists():
        raise InvalidRequest(f"{what} {ref}: no such file ({path})")
    return _file_source(path, what)


def _plan_from(store: Store, from_: str, base_dir: Path | None, allow_paths: bool) -> _Plan:
    ref = from_.strip()
    if not ref:
        raise ModelfileError("FROM is empty")
    if _DIGEST_RE.fullmatch(ref):
        return _Plan(model=_resolve_file_or_blob(store, ref, base_dir, "FROM", allow_paths))
    path = _expand(ref, base_dir)
    if _own_blob(store, path) or (allow_paths and path.exists()):
        return _Plan(model=_resolve_file_or_blob(store, ref, base_dir, "FROM", allow_paths))
    try:
        base = store.resolve(ref)
    except (InvalidName, ModelNotFound) as e:
        if _looks_like_path(ref):
            why = f"no such file ({path})" if allow_paths else PATHS_REFUSED
            raise InvalidRequest(f"FROM {ref}: {why}") from None
        if isinstance(e, InvalidName):
            raise InvalidRequest(f"FROM {ref}: neither a file nor a valid model name") from None
        raise ModelNotFound(ref, e.suggestions) from None
    inherited = {
        "template": base.template,
        "system": base.system,
        "params": dict(base.params),
        "messages": list(base.messages),
    }
    return _Plan(
        base_layers=list(base.manifest.get("layers", [])),
        base_config=dict(base.config),
        inherited=inherited,
    )


def _check_adapter(src: _Source, ref: str, family: str | None) -> None:
    assert src.info is not None
    kind = src.info.model_info.get("general.type")
    if isinstance(kind, str) and kind != "adapter":
        raise InvalidRequest(f"ADAPTER {ref}: this GGUF is a {kind}, not a LoRA adapter")
    if family and src.info.architecture != family:
        raise InvalidRequest(f"ADAPTER {ref}: made for {src.info.architecture}, but the model is {family}")


class _Writer:
    """Adds blobs and reports each layer as Ollama's create stream does."""

    def __init__(self, store: Store, progress: Progress) -> None:
        self.store = store
        self.progress = progress
        self.before = self._present()

    def _present(self) -> set[str]:
        names: set[str] = set()
        for d in (self.store.blobs_dir, self.store.external_dir):
            with contextlib.suppress(OSError):
                names.update(e.name.removesuffix(".json") for e in os.scandir(d))
        return names

    def _report(self, digest: str) -> None:
        verb = "using existing" if digest_filename(digest) in self.before else "creating new"
        self.progress({"status": f"{verb} layer {digest}"})

    def source(self, src: _Source, media: str) -> dict[str, Any]:
        if src.digest is not None:
            digest = src.digest
            size = self.store.blob_path(digest).stat().st_size
        else:
            assert src.path is not None and src.info is not None
            digest, size = self.store.add_blob_from_file(src.path, link=True)
            if size != src.info.size:
                raise InvalidRequest(f"{src.path} changed while it was being imported")
        self._report(digest)
        return {"mediaType": media, "digest": digest, "size": size}

    def data(self, data: bytes, media: str) -> dict[str, Any]:
        digest, size = self.store.add_blob_bytes(data)
        self._report(digest)
        return {"mediaType": media, "digest": digest, "size": size}

    def reuse(self, layer: dict[str, Any]) -> dict[str, Any]:
        self.progress({"status": f"using existing layer {parse_digest(layer['digest'])}"})
        return dict(layer)


def create_model(
    store: Store,
    name: str | ModelName,
    modelfile: Modelfile,
    *,
    base_dir: Path | None = None,
    allow_paths: bool = True,
    progress: Progress | None = None,
) -> ModelRecord:
    """Create (or replace) model ``name`` as ``modelfile`` describes; its record once written.

    FROM may name a model in the store (its layers are inherited and the Modelfile's instructions
    override them, parameters key by key), a GGUF file or a directory holding one (relative paths
    against ``base_dir``, else the current directory), or a blob ``sha256:...`` already stored.
    ``allow_paths=False`` (for the HTTP API) refuses files outside the store, as Ollama's server does.
    """
    report = progress or _noop
    mn = as_model_name(name)
    params = validate_parameters(modelfile.parameters)
    messages = validate_messages(modelfile.messages)
    plan = _plan_from(store, modelfile.from_, base_dir, allow_paths)
    family = plan.model.info.architecture if plan.model and plan.model.info else None
    family = family or plan.base_config.get("model_family") or None
    adapters = [
        (ref, _resolve_file_or_blob(store, ref, base_dir, "ADAPTER", allow_paths))
        for ref in modelfile.adapters
    ]
    for ref, src in adapters:
        _check_adapter(src, ref, family)

    inh = plan.inherited
    template = modelfile.template if modelfile.template is not None else inh.get("template")
    system = modelfile.system if modelfile.system is not None else inh.get("system")
    merged = {**inh.get("params", {}), **params}
    msgs = messages if modelfile.messages else inh.get("messages", [])

    # Blobs first.
    w = _Writer(store, report)
    layers: list[dict[str, Any]] = []
    if plan.model is not None:
        layers.append(w.source(plan.model, MEDIA_MODEL))
        assert plan.model.info is not None
        config = gguf_config(plan.model.info)
    else:
        keep = {MEDIA_MODEL, MEDIA_PROJECTOR}
        if not modelfile.adapters:
            keep.add(MEDIA_ADAPTER)
        if not modelfile.license:
            keep.add(MEDIA_LICENSE)
        layers += [w.reuse(layer) for layer in plan.base_layers if layer.get("mediaType") in keep]
        config = {k: v for k, v in plan.base_config.items() if k != "rootfs"}
    layers += [w.source(src, MEDIA_ADAPTER) for _, src in adapters]
    if template:
        layers.append(w.data(template.encode(), MEDIA_TEMPLATE))
    if system:
        layers.append(w.data(system.encode(), MEDIA_SYSTEM))
    layers += [w.data(text.encode(), MEDIA_LICENSE) for text in modelfile.license]
    if merged:
        # Integral floats as integers, as Go's encoding/json writes them (Ollama's params layers).
        plain = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in merged.items()}
        layers.append(w.data(json.dumps(plain).encode(), MEDIA_PARAMS))
    if msgs:
        layers.append(w.data(json.dumps(msgs).encode(), MEDIA_MESSAGES))
    config["rootfs"] = {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}
    cfg_digest, cfg_size = store.add_blob_bytes(json.dumps(config, separators=(",", ":")).encode())

    # The manifest last.
    report({"status": "writing manifest"})
    store.write_manifest(
        mn,
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": cfg_digest, "size": cfg_size},
            "layers": layers,
        },
    )
    record = store.resolve(mn)
    report({"status": "success"})
    return record


def _files_from(files: dict[str, str]) -> str:
    """The FROM reference for ``files`` {filename: digest}: the one GGUF among them."""
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise InvalidRequest("files must be an object of {filename: digest}")
    if not files:
        raise InvalidRequest("files is empty")
    names = list(files)
    if any(n.lower().endswith(".safetensors") for n in names):
        raise InvalidRequest(HF_MESSAGE)
    ggufs = [n for n in names if n.lower().endswith(".gguf")]
    if not ggufs:
        ggufs = [n for n in names if not n.lower().endswith((".json", ".txt", ".md", ".model", ".jinja"))]
    if len(ggufs) != 1:
        raise InvalidRequest(
            "files must hold exactly one GGUF model file"
            + (" (multimodal projectors are not supported yet)" if len(ggufs) > 1 else "")
        )
    return "@" + parse_digest(files[ggufs[0]])


def _adapters_from(adapters: Any) -> list[str]:
    if isinstance(adapters, dict) and all(isinstance(d, str) for d in adapters.values()):
        return ["@" + parse_digest(d) for d in adapters.values()]  # Ollama's API: {filename: digest}
    if isinstance(adapters, list) and all(isinstance(a, str) for a in adapters):
        return list(adapters)
    raise InvalidRequest("adapters must be an object of {filename: digest} or a list of paths")


def create_from_request(
    store: Store,
    name: str | ModelName,
    *,
    from_: str | None = None,
    files: dict[str, str] | None = None,
    template: str | None = None,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
    messages: list[Any] | None = None,
    license: str | list[str] | None = None,
    adapters: dict[str, str] | list[str] | None = None,
    modelfile_text: str | None = None,
    base_dir: Path | None = None,
    allow_paths: bool = True,
    progress: Progress | None = None,
) -> ModelRecord:
    """Ollama's ``/api/create`` body: ``from`` or ``files``, plus optional overrides, or the legacy
    ``modelfile`` text (whose instructions the structured fields then override)."""
    report = progress or _noop
    as_model_name(name)  # a bad name fails before anything else
    if modelfile_text is not None:
        report({"status": "parsing modelfile"})
        mf = parse(modelfile_text)
    else:
        mf = Modelfile(from_="")
    if from_:
        mf.from_ = from_
    elif files:
        mf.from_ = _files_from(files)
    elif files is not None and not mf.from_:
        raise InvalidRequest("files is empty")
    if not mf.from_:
        raise InvalidRequest("neither 'from' nor 'files' was specified")
    for key, value in (("template", template), ("system", system)):
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{key} must be a string")
    if template is not None:
        mf.template = template
    if system is not None:
        mf.system = system
    if parameters is not None:
        mf.parameters = {**mf.parameters, **validate_parameters(parameters)}
    if messages is not None:
        mf.messages = validate_messages(messages)
    if license is not None:
        licenses = [license] if isinstance(license, str) else license
        if not isinstance(licenses, list) or not all(isinstance(x, str) for x in licenses):
            raise InvalidRequest("license must be a string or a list of strings")
        mf.license = list(licenses)
    if adapters is not None:
        mf.adapters = _adapters_from(adapters)
    return create_model(store, name, mf, base_dir=base_dir, allow_paths=allow_paths, progress=report)
