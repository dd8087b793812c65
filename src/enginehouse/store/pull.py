"""One entry point for pulls, whatever the source: the name decides the protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from enginehouse.store.hf import HF_HOSTS, pull_hf
from enginehouse.store.names import ModelName
from enginehouse.store.pull_ollama import pull_ollama
from enginehouse.store.store import ModelRecord, Store

PullProgress = Callable[[dict[str, Any]], Awaitable[None] | None]


async def pull_model(
    store: Store, name: str, *, insecure: bool = False, progress: PullProgress | None = None
) -> ModelRecord:
    """Pull ``name``: ``hf.co/{owner}/{repo}[:{quant}]`` (or ``huggingface.co/...``) from Hugging
    Face (the GGUF of that quantisation, from ``HF_ENDPOINT`` or https://huggingface.co, with
    ``HF_TOKEN`` for gated or private repositories; see :mod:`enginehouse.store.hf`), anything else from an
    Ollama registry (``registry.ollama.ai`` unless the name carries a host)."""
    model_name = ModelName.parse(name)
    if model_name.host in HF_HOSTS:
        return await pull_hf(store, name, progress=progress, insecure=insecure)
    return await pull_ollama(store, name, progress=progress, insecure=insecure)
