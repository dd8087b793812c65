"""How many of a GGUF model's layers llama-server should put on the GPU (``--n-gpu-layers``).

Used when a model's entry does not set ``llama_server.n_gpu_layers`` and the machine has a GPU that the
llama-server build can use. :func:`layers_that_fit` is pure: free VRAM and the model's sizes in, a layer
count out. :func:`read_layer_sizes` reads those sizes from the GGUF's tensor table (no tensor data).

The model: llama.cpp offloads the last ``n`` repeating blocks (``blk.N.*``) and, once every block is on
the GPU, the output layer too (``-ngl`` = blocks + 1 means "everything"). Each offloaded block brings its
weights and its share of the KV cache; the GPU also needs a compute buffer whatever ``n`` is. A margin
(``reserve``) is left for the CUDA context and fragmentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from enginehouse.engines.llama_memory import MiB, kv_row_bytes

#: VRAM left free per GPU: the CUDA context, cuBLAS workspaces and fragmentation.
DEFAULT_RESERVE = 768 * MiB

_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class LayerSizes:
    """Tensor bytes of each repeating block (``blk.N``), in order, and of everything else."""

    blocks: tuple[int, ...]
    other: int  # token embeddings, output norm and output head

    @property
    def total(self) -> int:
        return sum(self.blocks) + self.other


def layers_that_fit(
    free_vram: int,
    sizes: LayerSizes,
    *,
    kv_per_layer: int = 0,
    compute: int = 0,
    reserve: int = DEFAULT_RESERVE,
) -> int:
    """The ``-ngl`` value: how many blocks fit in ``free_vram`` bytes, ``len(blocks) + 1`` when the whole
    model (output layer included) fits, 0 when not even one block does.

    ``kv_per_layer`` is one block's KV cache for the runner's whole context; ``compute`` the GPU compute
    buffer; ``reserve`` the margin kept free. llama.cpp offloads the *last* blocks first, so they are
    the ones counted.
    """
    room = free_vram - reserve - compute
    if room <= 0:
        return 0
    n = 0
    for block in reversed(sizes.blocks):
        need = block + kv_per_layer
        if need > room:
            return n
        room -= need
        n += 1
    return n + 1 if sizes.other <= room else n


def kv_bytes_per_layer(
    ctx_total: int,
    *,
    kv_heads: int,
    k_len: int,
    v_len: int,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
) -> int:
    """One block's KV cache for ``ctx_total`` cells."""
    return ctx_total * (
        kv_row_bytes(cache_type_k, kv_heads * k_len) + kv_row_bytes(cache_type_v, kv_heads * v_len)
    )


@lru_cache(maxsize=32)
def read_layer_sizes(path: Path) -> LayerSizes:
    """Per-block tensor bytes of a GGUF file, from its tensor table."""
    from gguf import GGUFReader

    reader = GGUFReader(path, "r")
    blocks: dict[int, int] = {}
    other = 0
    for t in reader.tensors:
        m = _BLOCK.match(t.name)
        if m:
            blocks[int(m.group(1))] = blocks.get(int(m.group(1)), 0) + int(t.n_bytes)
        else:
            other += int(t.n_bytes)
    return LayerSizes(tuple(blocks[i] for i in sorted(blocks)), other)


def free_vram(gpus: tuple[object, ...]) -> tuple[int, int]:
    """(free bytes summed over the GPUs, how many GPUs): llama.cpp splits layers across them."""
    return sum(int(getattr(g, "memory_free", 0)) for g in gpus), len(gpus)
