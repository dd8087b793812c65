"""vLLM's OpenAI-compatible server as a managed runner on loopback, for Hugging Face models on NVIDIA GPUs.

The command (:func:`build_argv`) is ``vllm serve MODEL`` or, when there is no ``vllm`` script, ``python
-m vllm.entrypoints.openai.api_server --model MODEL``, where MODEL is a Hugging Face directory or repo id,
followed by::

    --host 127.0.0.1 --port N --served-model-name NAME [--api-key KEY (or VLLM_API_KEY in its env)]
    [--max-model-len N] [--max-num-seqs N] [--gpu-memory-utilization F]
    [--tensor-parallel-size N] [--pipeline-parallel-size N] [--distributed-executor-backend ray|mp]
    [--enable-prefix-caching | --no-enable-prefix-caching] [--enable-sleep-mode] [flags...]

``--distributed-executor-backend ray`` spans nodes: start the Ray cluster first (``ray start --head`` on
this machine, ``ray start --address HEAD:6379`` on the others); vLLM joins it (``RAY_ADDRESS``).

Lifecycle: the same :class:`ManagedProcess` as llama-server (health on ``GET /health``, log file,
automatic restart). Idle: with sleep mode (the default), the first keep_alive expiry puts the runner to
sleep at level 1 (``POST /sleep?level=1``: weights moved to host RAM, KV cache dropped; needs
``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1``), so the next request wakes it
(``POST /wake_up``) in seconds instead of a cold start of tens of seconds; a second expiry stops it.
``GET /is_sleeping`` confirms each transition.

Written against vLLM's documented CLI and endpoints (0.8 to 0.11); the tests run it with a stand-in
``vllm`` script that execs llama-server and with a fake for the sleep endpoints, not with vLLM itself.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from enginehouse import http_client
from enginehouse.engines.base import Engine, EngineInfo
from enginehouse.engines.llama_server import log_name
from enginehouse.errors import EngineNotInstalled, RunnerError
from enginehouse.process import ManagedProcess, RestartPolicy, State

log = logging.getLogger(__name__)

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class VllmSettings:
    """Everything that decides a ``vllm serve`` command line."""

    model: str  # a Hugging Face directory or repo id
    served_name: str
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    distributed_executor_backend: str | None = None  # "ray" (multi-node) or "mp"
    enable_prefix_caching: bool | None = None
    sleep_mode: bool = True
    api_key: str | None = None  # the runner answers only the gateway
    #: pass the key as VLLM_API_KEY rather than --api-key: a command line is readable by every local user
    api_key_in_env: bool = True
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def find_vllm(
    configured: Path | None = None,
    *,
    which: Callable[[str], str | None] = shutil.which,
    importable: Callable[[str], bool] = lambda name: importlib.util.find_spec(name) is not None,
    python: str = sys.executable,
) -> tuple[str, ...]:
    """The launcher: ``(configured, "serve")``, ``(vllm on PATH, "serve")``, or ``(python, "-m",
    API_SERVER_MODULE)`` when only the package is importable. Raises EngineNotInstalled otherwise."""
    if configured is not None:
        return (str(configured), "serve")
    if path := which("vllm"):
        return (path, "serve")
    if importable("vllm"):
        return (python, "-m", API_SERVER_MODULE)
    raise EngineNotInstalled(
        "vLLM is not installed: `pip install vllm` into the Python that runs enginehouse (NVIDIA GPU "
        "needed), or set ENGINEHOUSE_VLLM to a vllm executable"
    )


def build_argv(launcher: tuple[str, ...], s: VllmSettings, port: int) -> list[str]:
    serve = launcher[-1] == "serve"
    argv = [*launcher, s.model] if serve else [*launcher, "--model", s.model]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", s.served_name]
    if s.api_key and not s.api_key_in_env:
        argv += ["--api-key", s.api_key]
    if s.max_model_len:
        argv += ["--max-model-len", str(s.max_model_len)]
    if s.max_num_seqs:
        argv += ["--max-num-seqs", str(s.max_num_seqs)]
    if s.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", f"{s.gpu_memory_utilization:g}"]
    if s.tensor_parallel_size:
        argv += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
    if s.pipeline_parallel_size:
        argv += ["--pipeline-parallel-size", str(s.pipeline_parallel_size)]
    if s.distributed_executor_backend:
        argv += ["--distributed-executor-backend", s.distributed_executor_backend]
    if s.enable_prefix_caching is not None:
        argv += ["--enable-prefix-caching" if s.enable_prefix_caching else "--no-enable-prefix-caching"]
    if s.sleep_mode:
        argv += ["--enable-sleep-mode"]
    return argv + list(s.extra_args)


def runner_env(s: VllmSettings) -> dict[str, str]:
    """Environment overrides: the sleep endpoints exist only in vLLM's dev mode; the API key, unless
    it is on the command line (vLLM reads ``VLLM_API_KEY`` as the default of ``--api-key``)."""
    env = {"VLLM_SERVER_DEV_MODE": "1"} if s.sleep_mode else {}
    if s.api_key and s.api_key_in_env:
        env["VLLM_API_KEY"] = s.api_key
    return env


class VllmEngine(Engine):
    kind = "vllm"
    capabilities = frozenset({"completion", "tools"})

    def __init__(
        self,
        launcher: tuple[str, ...],
        settings: VllmSettings,
        *,
        log_dir: Path,
        ready_timeout: float = 600.0,
        restart: RestartPolicy | None = None,
    ) -> None:
        self.launcher = launcher
        self.settings = settings
        self.process = ManagedProcess(
            f"vllm[{settings.served_name}]",
            lambda port: build_argv(launcher, settings, port),
            log_path=log_dir / log_name("vllm-" + settings.served_name),
            health_path="/health",
            health_headers=self.request_headers,
            env=runner_env(settings),
            ready_timeout=ready_timeout,
            stop_grace=30.0,  # vLLM frees GPU memory and joins its workers on SIGTERM
            restart=restart or RestartPolicy(),
        )
        self._sleeping = False
        self._wake_lock: asyncio.Lock | None = None

    @property
    def base_url(self) -> str:
        return self.process.base_url

    @property
    def served_model(self) -> str:
        return self.settings.served_name

    @property
    def request_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}

    @property
    def sleeping(self) -> bool:
        return self._sleeping

    async def ensure_ready(self, timeout: float | None = None) -> None:
        """Start the runner (see :meth:`ManagedProcess.ensure_ready`), or wake it when it sleeps."""
        if self.process.state is not State.READY:
            self._sleeping = False  # a fresh process starts awake
            await self.process.ensure_ready(timeout)
            return
        if self._sleeping:
            await self._wake()

    async def idle(self) -> bool:
        """First expiry: sleep (level 1) and stay; True when it now sleeps. Already asleep, sleep mode
        off, or the sleep failed: False, and the scheduler stops the runner."""
        if not self.settings.sleep_mode or self._sleeping or self.process.state is not State.READY:
            return False
        try:
            await self._call("POST", "/sleep?level=1")
            self._sleeping = bool((await self._call("GET", "/is_sleeping")).get("is_sleeping", True))
        except (RunnerError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("vllm %s: could not sleep (%s); stopping it instead", self.served_model, exc)
            return False
        if self._sleeping:
            log.info("vllm %s: asleep (level 1) until the next request", self.served_model)
        return self._sleeping

    async def _wake(self) -> None:
        self._wake_lock = self._wake_lock or asyncio.Lock()
        async with self._wake_lock:  # concurrent requests share one wake-up
            if not self._sleeping:
                return
            await self._call("POST", "/wake_up")
            state = await self._call("GET", "/is_sleeping")
            if state.get("is_sleeping"):
                raise RunnerError(f"vllm {self.served_model} did not wake up")
            self._sleeping = False
            log.info("vllm %s: awake", self.served_model)

    async def _call(self, method: str, path: str, timeout: float = 120.0) -> dict:
        """One call to the runner's management endpoints; a JSON body or {}."""
        async with (
            http_client.session(timeout=timeout) as http,
            http.request(method, self.base_url + path, headers=self.request_headers) as resp,
        ):
            text = await resp.text()
            if resp.status != 200:
                raise RunnerError(
                    f"vllm {self.served_model}: {method} {path} answered {resp.status}: {text[:200]}"
                )
            try:
                data = await resp.json(content_type=None) if text.strip() else {}
            except ValueError:
                data = {}
            return data if isinstance(data, dict) else {}

    async def stop(self) -> None:
        self._sleeping = False
        await self.process.stop()

    def info(self) -> EngineInfo:
        p = self.process
        s = self.settings
        return EngineInfo(
            self.kind,
            "sleeping" if self._sleeping else p.state.name.lower(),
            p.base_url if p.port else "",
            p.pid,
            p.restarts,
            {
                "max_model_len": s.max_model_len,  # not ctx_per_slot: a bigger num_ctx must not reload
                "num_parallel": s.max_num_seqs or 256,
                "model": s.model,
                "tensor_parallel_size": s.tensor_parallel_size or 1,
                "pipeline_parallel_size": s.pipeline_parallel_size or 1,
                "log": str(p.log_path),
            },
        )
