"""How much memory a llama-server runner will take, predicted from its GGUF header and its settings.

The scheduler must decide *before* starting a runner whether it fits, because a runner that runs out of
memory dies (or drags the machine into swap) long after the decision. :func:`estimate_runner` predicts
a runner's resident size from the GGUF header alone (the scheduler's :mod:`enginehouse.sched.memory`
corrects it once the model has been loaded and says how much all our runners together may hold).

The constants were fitted on the pinned CPU build of llama-server (llama.cpp 0c1e570) with five models
(SmolLM2-135M and four synthetic llama-shaped GGUFs, vocabularies 32k to 152k): every term below
matched llama.cpp's own buffer report to the MiB, and the totals matched the runner's RSS after its first
request within 3 MiB. A GPU build also holds a CUDA context (hundreds of MiB of host memory) that these
constants do not cover; the corrector learns it after the first load.
"""

from __future__ import annotations

from dataclasses import dataclass

from enginehouse.store.gguf_info import EMBEDDING_ARCHITECTURES, GGUFInfo

MiB = 1 << 20

#: llama-server's own resident memory with a model of no size: binary, heap, threads, HTTP server.
DEFAULT_OVERHEAD = 20 * MiB
#: Resident bytes per byte of GGUF metadata: the parsed vocabulary (token strings, scores, BPE merges
#: in hash maps) costs ~7.5x its size on disk. Fitted: 0.7 MiB metadata -> 23 MiB, 7.5 MiB -> 74 MiB.
TOKENIZER_FACTOR = 7.5
#: llama-server's default physical batch (-ub). Compute buffers scale with it.
DEFAULT_UBATCH = 512
#: When the GGUF does not say ``<arch>.vocab_size``: a large modern vocabulary, to err on the safe side.
FALLBACK_VOCAB = 152_064
#: llama.cpp rounds the context of each sequence up to a multiple of this.
CTX_PAD = 256

# (elements per block, bytes per block) of the KV cache types llama-server accepts (-ctk / -ctv).
_KV_TYPES: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
    "iq4_nl": (32, 18),
}


def _mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


@dataclass(frozen=True)
class MemoryEstimate:
    """A runner's predicted resident size, by term, in bytes."""

    weights: int
    kv_cache: int
    compute: int
    overhead: int
    prompt_cache: int = 0  # --cache-ram: an upper bound the runner may grow into

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead + self.prompt_cache

    def describe(self) -> str:
        parts = [
            f"weights {_mib(self.weights)}",
            f"KV cache {_mib(self.kv_cache)}",
            f"compute {_mib(self.compute)}",
            f"overhead {_mib(self.overhead)}",
        ]
        if self.prompt_cache:
            parts.append(f"prompt cache {_mib(self.prompt_cache)}")
        return f"{_mib(self.total)} ({', '.join(parts)})"


def kv_row_bytes(cache_type: str, n: int) -> int:
    """Bytes of one cached row of ``n`` elements; quantized types store whole 32-element blocks."""
    try:
        per_block, block_bytes = _KV_TYPES[cache_type.lower()]
    except KeyError:
        raise ValueError(f"unknown KV cache type {cache_type!r} (known: {', '.join(_KV_TYPES)})") from None
    return -(-n // per_block) * block_bytes


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def _meta_int(info: GGUFInfo, key: str) -> int | None:
    v = info.model_info.get(f"{info.architecture}.{key}")
    if isinstance(v, list):  # per-layer values: the largest sizes the buffers
        v = max((x for x in v if isinstance(x, int)), default=None)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def estimate_runner(
    info: GGUFInfo,
    *,
    ctx_per_slot: int,
    num_parallel: int,
    kv_contexts: int | None = None,
    shared_kv: bool = False,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    embedding: bool = False,
    overhead: int = DEFAULT_OVERHEAD,
    cache_ram_mib: int = 0,
    n_ubatch: int = DEFAULT_UBATCH,
    flash_attention: bool = True,
) -> MemoryEstimate:
    """Predict the resident memory of ``llama-server -c ctx_per_slot*kv_contexts -np num_parallel``
    (``kv_contexts`` defaults to ``num_parallel``: each slot its own context). ``shared_kv``: the slots share
    one unified pool of ``kv_contexts`` contexts (``--kv-unified --kv-unified-per-slot ctx_per_slot``).

    Terms (bytes; ``ctx_slot = pad256(ctx_per_slot)`` as llama.cpp pads it, ``cells = ctx_slot *
    kv_contexts``, ``ub = min(n_ubatch, cells)``):

    - weights = sum of tensor sizes. They are mmapped, but llama.cpp touches every page while loading,
      so they all become resident (as page cache, shared by runners of the same file).
    - kv_cache = block_count * cells * (row(k, head_count_kv*key_length)
      + row(v, head_count_kv*value_length)), row() being bytes per element for f16/bf16 (2), f32 (4), or
      whole blocks for quantized types (q8_0: 34 bytes per 32 elements; q4_0 18, q4_1 20, q5_0 22, q5_1
      24). Exact for full-attention models (SWA or MLA models need less). Encoder-only embedding
      models keep no KV cache.
    - compute = ub * 4 * (4*embedding_length + 3*feed_forward_length)  (activations of one layer)
      + ub * span * 2  (the f16 attention mask, ``span`` the KV one sequence may see: ctx_slot, or the
      whole pool when shared; with flash attention off, plus ub*span*heads*4 for the attention scores)
      + num_parallel * vocab * 4  (the logits buffer: one row per slot, which is all that slots cost;
      measured: 32 slots sharing a pool of 4 x 4096 hold 7 MiB more than 4 slots of their own)
      + for an embedding runner of a decoder model, 2 * ub * vocab * 4: llama.cpp computes and keeps
      logits for every token of the batch. (llama.cpp allocates the buffer at load; it becomes
      resident with the first large prompt.)
    - overhead = ``overhead`` (the runner itself) + 7.5 * (file size - tensor bytes), the GGUF metadata
      being mostly the vocabulary, which llama.cpp parses into much larger structures.
    - prompt_cache = ``cache_ram_mib`` MiB, llama-server's host prompt cache, filled as prompts vary.
    """
    slots = max(1, num_parallel)
    ctx_slot = _pad(max(1, ctx_per_slot), CTX_PAD)
    cells = ctx_slot * max(1, kv_contexts if kv_contexts is not None else slots)
    span = cells if shared_kv else ctx_slot
    embd = info.embedding_length or 0
    heads = info.head_count or 0
    kv_heads = info.head_count_kv if info.head_count_kv is not None else heads
    head_dim = embd // heads if embd and heads else 0
    k_len = info.key_length or head_dim
    v_len = info.value_length or head_dim
    encoder_only = info.architecture in EMBEDDING_ARCHITECTURES

    kv = 0
    if not encoder_only and info.block_count:
        per_cell = kv_row_bytes(cache_type_k, kv_heads * k_len) + kv_row_bytes(cache_type_v, kv_heads * v_len)
        kv = info.block_count * cells * per_cell

    ub = max(1, min(n_ubatch, cells))
    n_ff = _meta_int(info, "feed_forward_length") or 4 * embd
    experts, ff_expert = _meta_int(info, "expert_used_count"), _meta_int(info, "expert_feed_forward_length")
    if experts and ff_expert:  # MoE: the active experts' activations
        n_ff = max(n_ff, experts * ff_expert)
    vocab = _meta_int(info, "vocab_size") or FALLBACK_VOCAB
    compute = ub * 4 * (4 * embd + 3 * n_ff) + ub * span * 2
    if not flash_attention:
        compute += ub * span * heads * 4
    if encoder_only:
        compute += slots * embd * 4
    else:
        compute += slots * vocab * 4
        if embedding:
            compute += 2 * ub * vocab * 4

    metadata = max(0, info.size - info.tensor_bytes)
    return MemoryEstimate(
        weights=info.tensor_bytes,
        kv_cache=kv,
        compute=compute,
        overhead=overhead + int(TOKENIZER_FACTOR * metadata),
        prompt_cache=max(0, cache_ram_mib) * MiB,
    )
