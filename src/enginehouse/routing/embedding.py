"""The routers' embedding runner: the bundled all-MiniLM-L6-v2 (converted into the store on first use),
served by a private llama-server with one slot for the server's life, and handed to every router's
classifier. Started by the first request that the keyword tier leaves to the embedding tier; without
it (no converter, no model) routers still work on keywords and default routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from enginehouse.engines.llama_install import require_llama_server
from enginehouse.engines.llama_server import LlamaServerEngine
from enginehouse.errors import EnginehouseError
from enginehouse.routing.classify import Classifier, Router
from enginehouse.routing.minilm import (
    EMBED_MODEL,
    RunnerEmbedder,
    ensure_embed_model,
    prepare_cached,
    runner_settings,
)

if TYPE_CHECKING:
    from enginehouse.config import Config
    from enginehouse.store import Store

log = logging.getLogger("enginehouse.routing")

#: Seconds the first embedding-tier decision waits for the runner to start.
START_TIMEOUT = 120.0


class RouterEmbedding:
    def __init__(
        self, config: Config, store: Store, classifiers: dict[str, Classifier], routers: dict[str, Router]
    ) -> None:
        self.config = config
        self.store = store
        self.classifiers = classifiers  # the dispatcher's, filled in as routers are used
        self.routers = routers
        self._embedder: RunnerEmbedder | None = None
        self._task: asyncio.Task[RunnerEmbedder | None] | None = None
        self._engine: object | None = None

    @property
    def settled(self) -> bool:
        """The runner was started, or could not be."""
        return self._task is not None and self._task.done()

    async def ensure(self) -> RunnerEmbedder | None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._start())
        try:
            return await asyncio.wait_for(asyncio.shield(self._task), START_TIMEOUT)
        except TimeoutError:
            log.warning("the router's embedding runner is not up yet: keyword tier and default routes only")
            return None

    async def _start(self) -> RunnerEmbedder | None:
        """The router's private embedding runner (all-MiniLM-L6-v2, one slot, pinned for the server's
        life). Without it the router still works: keyword tier, then the default route."""
        try:
            binary = require_llama_server(self.config).path
            path = await asyncio.to_thread(ensure_embed_model, self.config, self.store, EMBED_MODEL, log.info)
            engine = LlamaServerEngine(  # not lowered (ENGINEHOUSE_RUNNER_NICE): it answers inside a request
                binary,
                runner_settings(path, EMBED_MODEL, max(1, self.config.router_threads)),
                log_dir=self.config.logs,
                ready_timeout=120.0,
            )
            self._engine = engine
            await engine.ensure_ready()
            embedder = RunnerEmbedder(engine.base_url, EMBED_MODEL, headers=engine.request_headers)
            for name, router in self.routers.items():
                clf = self.classifiers.setdefault(name, Classifier(router))
                clf.embed = embedder
                await prepare_cached(clf, self.config.cache / "router", EMBED_MODEL)
            log.info("router embedding runner %s ready at %s", EMBED_MODEL, engine.base_url)
            self._embedder = embedder
            return embedder
        except EnginehouseError as exc:
            log.warning("routers classify by keywords only: %s", exc.message)
            return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._embedder is not None:
            await self._embedder.close()
        if self._engine is not None:
            await self._engine.stop()  # type: ignore[attr-defined]
