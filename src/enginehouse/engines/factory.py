"""Which engine runs a model, and with what settings: the one place that decides.

- A record from the catalog that names its engine (:class:`~enginehouse.engines.external.ExternalRecord`):
  ``ollama`` / ``openai`` attach to the upstream, ``vllm`` starts ``vllm serve`` on the HF directory or
  repo id, ``llama-server`` runs a GGUF given by path.
- A store model: its entry's ``engine`` (or the file's ``defaults.engine``); ``auto`` picks by format,
  GGUF -> llama-server at once (the hot path: no hardware probe), anything else through
  :func:`enginehouse.engines.choose.choose_engine` (a Hugging Face directory -> vLLM where it can run).

llama-server flags come from the entry's ``llama_server`` table. ``--n-gpu-layers`` not given is
computed from the free VRAM when the machine has an NVIDIA GPU and the build can use it
(:mod:`enginehouse.engines.offload`); on a machine without one no flag is passed.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from enginehouse.config import Config
from enginehouse.config_file import EMPTY, FileConfig, ModelEntry
from enginehouse.engines.base import Engine, RunnerSpec
from enginehouse.engines.choose import InstalledEngine, choose_engine, installed_engines, model_format
from enginehouse.engines.external import ExternalRecord, is_gguf
from enginehouse.engines.llama_install import require_llama_server, supports_shared_kv
from enginehouse.engines.llama_memory import MemoryEstimate, MiB, estimate_runner
from enginehouse.engines.llama_server import LlamaServerEngine, LlamaServerSettings
from enginehouse.engines.offload import (
    DEFAULT_RESERVE,
    free_vram,
    kv_bytes_per_layer,
    layers_that_fit,
    read_layer_sizes,
)
from enginehouse.engines.ollama_remote import OllamaRemoteEngine
from enginehouse.engines.openai_remote import DEFAULT_REMOTE_PARALLEL, OpenAIRemoteEngine
from enginehouse.engines.vllm import VllmEngine, VllmSettings, find_vllm
from enginehouse.errors import EngineNotInstalled, InvalidRequest
from enginehouse.hardware import Hardware
from enginehouse.hardware import detect as detect_hardware
from enginehouse.store import ModelRecord, Store
from enginehouse.store.gguf_info import EMBEDDING_ARCHITECTURES, GGUFInfo, read_gguf_info

log = logging.getLogger(__name__)

#: Slots of a llama-server runner when no ``num_parallel`` is set: as many, up to AUTO_SLOTS, as the slot
#: memory (ENGINEHOUSE_SLOT_MEMORY_MIB; by default a quarter of the memory the runner lives in) holds
#: contexts of their own, and never fewer than MIN_AUTO_SLOTS (the old fixed default). 32 slots carry 32
#: concurrent streams at the tokens/s and TTFT of a llama-server configured for them (bench/slots.py).
AUTO_SLOTS = 32
MIN_AUTO_SLOTS = 4
#: Share of the memory budget (RAM, or the GPUs' free VRAM when the model is offloaded) that the default
#: slots' KV cache may take.
AUTO_SLOT_SHARE = 4


@lru_cache(maxsize=64)
def _gguf_info(path: Path, size: int) -> GGUFInfo:  # size in the key: a replaced file is re-read
    return read_gguf_info(path)


def gguf_info_for(record: ModelRecord) -> GGUFInfo:
    return _gguf_info(record.model_path, record.model_path.stat().st_size)


class EngineFactory:
    """``factory(record, spec)`` -> an Engine, not started. ``hardware`` and ``installed`` (for tests)
    replace the probes of this machine, which otherwise run on first need only."""

    def __init__(
        self,
        config: Config,
        file_config: FileConfig = EMPTY,
        *,
        store: Store | None = None,
        hardware: Hardware | None = None,
        installed: dict[str, InstalledEngine] | None = None,
        detect: Callable[[], Hardware] | None = None,
    ) -> None:
        self.config = config
        self.file_config = file_config
        self._store = store
        self._hardware = hardware
        self._installed = installed
        self._detect = detect

    # ---- the model's entry ----------------------------------------------------------------------
    def entry_for(self, record: ModelRecord) -> ModelEntry:
        if isinstance(record, ExternalRecord):
            return record.entry
        # An entry whose source is a store model answers under the entry's name (catalog: a named
        # instance), so the name finds the entry.
        return self.file_config.entry(record.name.display) or ModelEntry()

    def num_parallel_for(self, record: ModelRecord, ctx: int | None = None) -> int:
        """Slots: the model's entry, then the file's defaults, then ENGINEHOUSE_NUM_PARALLEL; unset
        everywhere (0): :meth:`auto_slots` for contexts of ``ctx`` tokens (or AUTO_SLOTS sharing a pool
        when ENGINEHOUSE_KV_POOL is set)."""
        explicit = self._explicit_slots(record)
        if explicit:
            return explicit
        if self.config.kv_pool > 0:
            return AUTO_SLOTS
        return self.auto_slots(record, ctx or self.config.ctx_size)

    def kv_pool_for(self, record: ModelRecord) -> int:
        """Per-slot contexts of a KV pool the slots share (ENGINEHOUSE_KV_POOL, default slots only), or 0:
        each slot its own context. An explicit ``num_parallel`` keeps its meaning (and its memory)."""
        return 0 if self._explicit_slots(record) else max(0, self.config.kv_pool)

    def _explicit_slots(self, record: ModelRecord) -> int:
        entry = self.entry_for(record)
        n = entry.num_parallel or self.file_config.defaults.num_parallel or self.config.num_parallel
        return max(0, n)

    def slot_memory(self, record: ModelRecord) -> int:
        """Bytes the default slots' KV cache may take: ENGINEHOUSE_SLOT_MEMORY_MIB, else a quarter of the
        budget (ENGINEHOUSE_MAX_MEMORY_MIB, or RAM less the reserve; the GPUs' free VRAM for a model
        llama-server offloads), less nothing else: the eviction policy still decides what fits."""
        if self.config.slot_memory_mib > 0:
            return self.config.slot_memory_mib * MiB
        hw = self.hardware()
        built = self.installed().get("llama-server") if hw.gpus else None
        if hw.gpus and (built is None or built.backends is None or "CUDA" in built.backends):
            memory = free_vram(self.hardware(fresh=True).gpus)[0]
        else:
            total = hw.memory.total - self.config.memory_reserve_mib * MiB
            cap = self.config.max_memory_mib * MiB
            memory = min(total, cap) if cap else total
        return max(0, memory) // AUTO_SLOT_SHARE

    def auto_slots(self, record: ModelRecord, ctx: int) -> int:
        """As many slots of ``ctx`` tokens as :meth:`slot_memory` holds KV caches for, within
        [MIN_AUTO_SLOTS, AUTO_SLOTS]."""
        info = gguf_info_for(record)
        opts = self.entry_for(record).llama_server
        per_context = estimate_runner(
            info,
            ctx_per_slot=ctx,
            num_parallel=1,
            cache_type_k=opts.cache_type_k or "f16",
            cache_type_v=opts.cache_type_v or "f16",
        ).kv_cache
        if per_context <= 0:  # no KV cache (an encoder): slots cost nothing but a logits row
            return AUTO_SLOTS
        return max(MIN_AUTO_SLOTS, min(AUTO_SLOTS, self.slot_memory(record) // per_context))

    # ---- which engine ---------------------------------------------------------------------------
    def engine_for(self, record: ModelRecord) -> str:
        """ "llama-server", "vllm", "ollama" or "openai"; raises EngineNotInstalled with the reason
        when nothing here can run the model."""
        if isinstance(record, ExternalRecord):
            if record.engine != "vllm" or record.entry.engine == "vllm":
                return record.engine  # named explicitly: vLLM reports its own failure if it cannot run
            return self._choose("safetensors", "auto")
        entry = self.entry_for(record)
        requested = entry.engine if entry.engine != "auto" else self.file_config.defaults.engine
        fmt = model_format(record)
        if fmt == "gguf" and requested in ("auto", "llama-server"):
            return "llama-server"
        if fmt == "safetensors" and requested == "vllm":
            return "vllm"
        return self._choose(fmt, requested)

    def _choose(self, fmt: str | None, requested: str) -> str:
        choice = choose_engine(fmt, requested, hardware=self.hardware(), installed=self.installed())
        if not choice.runnable or choice.engine is None:
            raise EngineNotInstalled(choice.reason)
        return choice.engine

    def hardware(self, *, fresh: bool = False) -> Hardware:
        """This machine (probed once); ``fresh`` re-probes a machine with GPUs, for their free VRAM now."""
        if self._hardware is None or (fresh and self._detect is not None and self._hardware.gpus):
            if self._detect is None:
                self._detect = detect_hardware
            self._hardware = self._detect()
        return self._hardware

    def installed(self) -> dict[str, InstalledEngine]:
        if self._installed is None:
            self._installed = installed_engines(self.config)
        return self._installed

    # ---- llama-server ---------------------------------------------------------------------------
    def settings_for(self, record: ModelRecord, spec: RunnerSpec | None = None) -> LlamaServerSettings:
        spec = spec or RunnerSpec()
        info = gguf_info_for(record)
        entry = self.entry_for(record)
        opts = entry.llama_server
        default_ctx = entry.num_ctx or self.file_config.defaults.num_ctx or self.config.ctx_size
        ctx = max(int(record.params.get("num_ctx") or default_ctx), spec.num_ctx or 0)
        if info.context_length:
            ctx = min(ctx, info.context_length)  # beyond the trained context the model degrades
        extra: tuple[str, ...] = ()
        # An encoder scores a (query, document) pair in one micro-batch: one as large as a slot's context
        # lets every pair that fits the context through (llama-server refuses a longer one as too long).
        encoder = spec.rerank and info.architecture in EMBEDDING_ARCHITECTURES
        pair_batch = max(ctx, 512) if encoder else None
        if spec.rerank and not info.is_reranker:
            raise InvalidRequest(f"{record.name.display} is not a reranking model")
        if spec.embedding and info.is_reranker:  # rank pooling gives one score per input, not a vector
            raise InvalidRequest(f"{record.name.display} is a reranking model: use /api/rerank or /v1/rerank")
        if spec.embedding and not info.is_embedding:
            extra = ("--pooling", "mean")  # a chat model asked to embed: average its hidden states
        for adapter in record.adapters:  # Modelfile ADAPTER lines: LoRA applied by llama-server
            extra += ("--lora", str(adapter))
        extra += entry.flags
        embedding = info.is_embedding or spec.embedding or spec.rerank
        # An embedding runner keeps its old default (4 slots of their own): it answers batches of inputs,
        # not concurrent streams.
        embedding_slots = self._explicit_slots(record) or MIN_AUTO_SLOTS
        settings = LlamaServerSettings(
            model_path=record.model_path,
            alias=record.name.display,
            ctx_per_slot=ctx,
            num_parallel=self.num_parallel_for(record, ctx) if not embedding else embedding_slots,
            kv_pool=self.kv_pool_for(record) if not embedding else 0,
            threads=opts.threads or int(record.params.get("num_thread") or self.config.threads),
            cache_ram_mib=self.config.cache_ram_mib,
            embedding=embedding,
            rerank=spec.rerank,
            extra_args=extra,
            n_gpu_layers=opts.n_gpu_layers,
            flash_attn=opts.flash_attn,
            cache_type_k=opts.cache_type_k,
            cache_type_v=opts.cache_type_v,
            batch_size=opts.batch_size or pair_batch,
            ubatch_size=opts.ubatch_size or pair_batch,
            draft_model=self._draft_path(opts.draft_model) if opts.draft_model else None,
            # The first projector: Ollama's manifests carry one; an embedding runner needs none.
            mmproj=record.projectors[0] if record.projectors and not spec.embedding else None,
            jinja=opts.jinja is not False,
            # Split over llama.cpp RPC workers: part of the weights and KV cache then live on those hosts,
            # but the local memory estimate (_estimate) is left whole, so it errs on the safe side.
            rpc=tuple(opts.rpc),
        )
        # Not with RPC workers: the VRAM probe sees local GPUs only, llama.cpp's own --fit sees every device.
        if settings.n_gpu_layers is None and not settings.rpc:
            settings = dataclasses.replace(settings, n_gpu_layers=self.auto_gpu_layers(record, settings))
        return settings

    def _draft_path(self, value: str) -> Path:
        """A draft model for speculative decoding: a GGUF path, else a store name."""
        path = Path(value).expanduser()
        if path.is_file():
            return path
        store = self._store or Store(self.config.models)
        return store.resolve(value).model_path

    def auto_gpu_layers(self, record: ModelRecord, settings: LlamaServerSettings) -> int | None:
        """``-ngl`` from the free VRAM, or None (no flag) without a GPU this llama-server build can use.

        Hook: :mod:`enginehouse.engines.offload` does the arithmetic; the GPUs come from
        :func:`enginehouse.hardware.detect`, re-probed at each load for the VRAM free now."""
        if not self.hardware().gpus:
            return None  # CPU, or Apple Silicon, where llama-server's own default offloads everything
        built = self.installed().get("llama-server")
        backends = built.backends if built is not None else None
        if backends is not None and "CUDA" not in backends:
            return None  # a CPU build: it cannot use the GPU
        info = gguf_info_for(record)
        free, count = free_vram(self.hardware(fresh=True).gpus)
        heads = info.head_count or 1
        head_dim = (info.embedding_length or 0) // heads
        kv_heads = info.head_count_kv if info.head_count_kv is not None else heads
        kv = kv_bytes_per_layer(
            settings.ctx_total,
            kv_heads=kv_heads,
            k_len=info.key_length or head_dim,
            v_len=info.value_length or head_dim,
            cache_type_k=settings.cache_type_k or "f16",
            cache_type_v=settings.cache_type_v or "f16",
        )
        compute = self._estimate(record, settings).compute
        return layers_that_fit(
            free,
            read_layer_sizes(record.model_path),
            kv_per_layer=kv,
            compute=compute,
            reserve=DEFAULT_RESERVE * count,
        )

    def _estimate(self, record: ModelRecord, settings: LlamaServerSettings) -> MemoryEstimate:
        estimate = estimate_runner(
            gguf_info_for(record),
            ctx_per_slot=settings.ctx_per_slot,
            num_parallel=settings.num_parallel,
            kv_contexts=settings.kv_contexts,
            shared_kv=settings.shared_kv,
            cache_type_k=settings.cache_type_k or "f16",
            cache_type_v=settings.cache_type_v or "f16",
            embedding=settings.embedding,
            cache_ram_mib=settings.cache_ram_mib,
            n_ubatch=settings.ubatch_size or 512,
            flash_attention=settings.flash_attn != "off",
        )
        if settings.draft_model is not None:  # the draft model's weights are resident too
            draft = _gguf_info(settings.draft_model, settings.draft_model.stat().st_size)
            estimate = dataclasses.replace(estimate, weights=estimate.weights + draft.tensor_bytes)
        if settings.mmproj is not None:  # so are the projector's (its file size: close enough)
            extra = settings.mmproj.stat().st_size
            estimate = dataclasses.replace(estimate, weights=estimate.weights + extra)
        return estimate

    def estimate_for(self, record: ModelRecord, spec: RunnerSpec | None = None) -> MemoryEstimate | None:
        """What a runner for ``record`` would hold in host RAM, from its GGUF and the settings it would
        get. None for remote models (nothing here) and vLLM (its memory is the GPU's, claimed by
        ``gpu_memory_utilization``): the scheduler then plans no host memory for the load, while a running
        vLLM's measured RSS still counts against the budget of later loads."""
        if not is_gguf(record):
            return None
        settings = self.settings_for(record, spec)
        return self._estimate(record, settings)

    # ---- vLLM -----------------------------------------------------------------------------------
    def vllm_settings(self, record: ModelRecord) -> VllmSettings:
        entry = self.entry_for(record)
        v = entry.vllm
        model = record.remote_model if isinstance(record, ExternalRecord) else str(record.model_path)
        return VllmSettings(
            model=model,
            served_name=record.name.display,
            max_model_len=entry.num_ctx or self.file_config.defaults.num_ctx,
            max_num_seqs=entry.num_parallel,
            gpu_memory_utilization=v.gpu_memory_utilization,
            tensor_parallel_size=v.tensor_parallel_size,
            pipeline_parallel_size=v.pipeline_parallel_size,
            distributed_executor_backend=v.distributed_executor_backend,
            enable_prefix_caching=v.enable_prefix_caching,
            sleep_mode=v.sleep_mode,
            api_key=secrets.token_urlsafe(24),
            extra_args=entry.flags,
        )

    # ---- the engine -----------------------------------------------------------------------------
    def dialects_for(self, record: ModelRecord) -> frozenset[str]:
        """The client dialects the model's engine takes as they come (:attr:`Engine.dialects`), known
        before it is started: a door forwards a request that only the engine can answer (an Ollama
        upstream's own load and unload) without loading anything here."""
        if isinstance(record, ExternalRecord) and self.engine_for(record) == "ollama":
            from enginehouse.engines.ollama_remote import OllamaRemoteEngine

            return OllamaRemoteEngine.dialects
        return Engine.dialects

    def __call__(self, record: ModelRecord, spec: RunnerSpec | None = None) -> Engine:
        engine = self.engine_for(record)
        if engine in ("ollama", "openai"):
            assert isinstance(record, ExternalRecord) and record.upstream is not None
            cls = OllamaRemoteEngine if engine == "ollama" else OpenAIRemoteEngine
            return cls(
                record.upstream_name or "",
                record.upstream.url,
                record.remote_model,
                api_key=record.upstream.api_key,
                num_parallel=record.entry.num_parallel or DEFAULT_REMOTE_PARALLEL,
            )
        if engine == "vllm":
            if spec is not None and spec.embedding:  # a second GPU runner that vLLM would refuse anyway
                raise InvalidRequest(
                    f"{record.name.display}: embeddings from vLLM models are not supported yet"
                )
            if spec is not None and spec.rerank:
                raise InvalidRequest(
                    f"{record.name.display}: reranking with vLLM models is not supported yet"
                )

            return VllmEngine(
                find_vllm(self.config.vllm),
                self.vllm_settings(record),
                log_dir=self.config.logs,
                ready_timeout=self.config.load_timeout,
            )
        binary = require_llama_server(self.config)
        settings = self.settings_for(record, spec)
        if settings.shared_kv and not supports_shared_kv(binary.path):
            # A llama-server from elsewhere without the per-slot cap: as many slots of their own as the
            # pool holds contexts, which is the memory the estimate counted.
            log.info(
                "%s has no --kv-unified-per-slot: %d slots of their own", binary.path, settings.kv_contexts
            )
            settings = dataclasses.replace(settings, num_parallel=settings.kv_contexts, kv_pool=0)
        return LlamaServerEngine(
            binary.path,
            settings,
            log_dir=self.config.logs,
            ready_timeout=self.config.load_timeout,
            nice=self.config.runner_nice,
        )
