"""A tiny multimodal projector for the bundled SmolLM2 text model: llama.cpp's LLaVA ("mlp") layout
with random weights, written with the ``gguf`` library.

Nothing it "sees" means anything; it is real enough for llama-server's mtmd loader to accept it next to
the text model (``--mmproj``), to encode an image into embeddings of the text model's width, and so to
carry an image through the whole request path. Keys and tensor names are those of the vendored
llama.cpp's ``tools/mtmd/clip.cpp`` (``clip-impl.h``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TEXT_EMBD = 576  # SmolLM2-135M's embedding width: the projector's output must match it
IMAGE_SIZE = 28
PATCH_SIZE = 14
VISION_EMBD = 32
VISION_FF = 64
VISION_HEADS = 2
VISION_LAYERS = 2  # LLaVA takes the second-to-last layer's output: one layer runs


def write_projector(path: Path, seed: int = 0) -> Path:
    """Write the projector GGUF at ``path`` and return it."""
    import gguf

    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_string("general.name", "enginehouse tiny test projector")
    w.add_uint32("general.file_type", 0)  # all F32
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    w.add_uint32("clip.vision.embedding_length", VISION_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", VISION_FF)
    w.add_uint32("clip.vision.block_count", VISION_LAYERS)
    w.add_uint32("clip.vision.projection_dim", TEXT_EMBD)
    w.add_uint32("clip.vision.attention.head_count", VISION_HEADS)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    n_pos = (IMAGE_SIZE // PATCH_SIZE) ** 2
    # numpy shapes are ggml's ne reversed: a conv kernel is ne [p, p, 3, embd].
    w.add_tensor("v.patch_embd.weight", rand(VISION_EMBD, 3, PATCH_SIZE, PATCH_SIZE))
    w.add_tensor("v.position_embd.weight", rand(n_pos, VISION_EMBD))
    w.add_tensor("v.pre_ln.weight", np.ones(VISION_EMBD, np.float32))
    w.add_tensor("v.pre_ln.bias", np.zeros(VISION_EMBD, np.float32))
    for i in range(VISION_LAYERS):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"v.blk.{i}.{name}.weight", rand(VISION_EMBD, VISION_EMBD))
            w.add_tensor(f"v.blk.{i}.{name}.bias", np.zeros(VISION_EMBD, np.float32))
        for name in ("ln1", "ln2"):
            w.add_tensor(f"v.blk.{i}.{name}.weight", np.ones(VISION_EMBD, np.float32))
            w.add_tensor(f"v.blk.{i}.{name}.bias", np.zeros(VISION_EMBD, np.float32))
        w.add_tensor(f"v.blk.{i}.ffn_up.weight", rand(VISION_FF, VISION_EMBD))
        w.add_tensor(f"v.blk.{i}.ffn_up.bias", np.zeros(VISION_FF, np.float32))
        w.add_tensor(f"v.blk.{i}.ffn_down.weight", rand(VISION_EMBD, VISION_FF))
        w.add_tensor(f"v.blk.{i}.ffn_down.bias", np.zeros(VISION_EMBD, np.float32))
    w.add_tensor("mm.0.weight", rand(TEXT_EMBD, VISION_EMBD))
    w.add_tensor("mm.0.bias", np.zeros(TEXT_EMBD, np.float32))
    w.add_tensor("mm.2.weight", rand(TEXT_EMBD, TEXT_EMBD))
    w.add_tensor("mm.2.bias", np.zeros(TEXT_EMBD, np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_png(width: int = 8, height: int = 8) -> bytes:
    """A small valid PNG (a gradient), made without an imaging library."""
    import struct
    import zlib

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 30 % 256, y * 30 % 256, 128))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body
