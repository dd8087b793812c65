"""Which engine runs a model, and with what settings.

GGUF files go to llama-server. (Hugging Face directories to vLLM, and remote engines, arrive with the
engines issue; the choice stays here, in one place.)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from enginehouse.config import Config
from enginehouse.config_file import EMPTY, FileConfig, ModelEntry
from enginehouse.engines.base import Engine, RunnerSpec
from enginehouse.engines.llama_install import require_llama_server
from enginehouse.engines.llama_server import LlamaServerEngine, LlamaServerSettings
from enginehouse.sched.memory import MemoryEstimate, estimate_runner
from enginehouse.store import ModelRecord
from enginehouse.store.gguf_info import GGUFInfo, read_gguf_info


@lru_cache(maxsize=64)
def _gguf_info(path: Path, size: int) -> GGUFInfo:  # size in the key: a replaced file is re-read
    return read_gguf_info(path)


def gguf_info_for(record: ModelRecord) -> GGUFInfo:
    return _gguf_info(record.model_path, record.model_path.stat().st_size)


class EngineFactory:
    def __init__(self, config: Config, file_config: FileConfig = EMPTY) -> None:
        self.config = config
        self.file_config = file_config

    def entry_for(self, record: ModelRecord) -> ModelEntry:
        return self.file_config.entry(record.name.display) or ModelEntry()

    def num_parallel_for(self, record: ModelRecord) -> int:
        """Slots: the model's entry, then the file's defaults, then ENGINEHOUSE_NUM_PARALLEL."""
        entry = self.entry_for(record)
        return max(
            1, entry.num_parallel or self.file_config.defaults.num_parallel or self.config.num_parallel
        )

    def settings_for(self, record: ModelRecord, spec: RunnerSpec | None = None) -> LlamaServerSettings:
        spec = spec or RunnerSpec()
        info = gguf_info_for(record)
        entry = self.entry_for(record)
        default_ctx = entry.num_ctx or self.file_config.defaults.num_ctx or self.config.ctx_size
        ctx = max(int(record.params.get("num_ctx") or default_ctx), spec.num_ctx or 0)
        if info.context_length:
            ctx = min(ctx, info.context_length)  # beyond the trained context the model degrades
        extra: tuple[str, ...] = ()
        if spec.embedding and not info.is_embedding:
            extra = ("--pooling", "mean")  # a chat model asked to embed: average its hidden states
        for adapter in record.adapters:  # Modelfile ADAPTER lines: LoRA applied by llama-server
            extra += ("--lora", str(adapter))
        extra += entry.flags
        return LlamaServerSettings(
            model_path=record.model_path,
            alias=record.name.display,
            ctx_per_slot=ctx,
            num_parallel=self.num_parallel_for(record),
            threads=int(record.params.get("num_thread") or self.config.threads),
            cache_ram_mib=self.config.cache_ram_mib,
            embedding=info.is_embedding or spec.embedding,
            extra_args=extra,
        )

    def estimate_for(self, record: ModelRecord, spec: RunnerSpec | None = None) -> MemoryEstimate:
        """What a runner for ``record`` would hold, from its GGUF and the settings it would get."""
        settings = self.settings_for(record, spec)
        return estimate_runner(
            gguf_info_for(record),
            ctx_per_slot=settings.ctx_per_slot,
            num_parallel=settings.num_parallel,
            embedding=settings.embedding,
            cache_ram_mib=settings.cache_ram_mib,
        )

    def __call__(self, record: ModelRecord, spec: RunnerSpec | None = None) -> Engine:
        binary = require_llama_server(self.config)
        return LlamaServerEngine(
            binary.path,
            self.settings_for(record, spec),
            log_dir=self.config.logs,
            ready_timeout=self.config.load_timeout,
        )
