"""llama.cpp's ``llama-server`` as a managed runner on loopback.

One runner serves one model with ``num_parallel`` slots and continuous batching. Its KV cache is laid out
one of two ways:

- own contexts (``kv_pool`` 0): llama-server splits ``-c`` across its slots (``-c 4096 -np 8`` leaves 512
  tokens each), so we pass the per-slot context times the slot count.
- a shared pool (``kv_pool`` N, opt-in with ENGINEHOUSE_KV_POOL): one unified KV buffer of N per-slot contexts
  (``--kv-unified``) that all slots draw from as their requests grow, each request capped at the per-slot
  context (``--kv-unified-per-slot``). Many slots then cost the memory of N: short concurrent requests
  each get a slot at once, but on CPU each step is slower (0.71-0.84x the tokens/s at 8 and 32 streams,
  bench/slots.py), and if the requests in progress together outgrow the pool llama-server fails all of
  them ("Context size has been exceeded."): docs/engines.md.

Its host-RAM prompt cache (``--cache-ram``) defaults to 8 GiB and grows with distinct
prompts, so we always set it on purpose.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from enginehouse.canonical import ChatCall, CompletionCall
from enginehouse.engines.base import Engine, EngineInfo
from enginehouse.engines.openai_wire import chat_request
from enginehouse.engines.rpc_worker import check_workers_async, name_failed_workers
from enginehouse.engines.upstream import Upstream
from enginehouse.errors import EnginehouseError, EngineRefused, RunnerStartFailed
from enginehouse.process import ManagedProcess, RestartPolicy, State


@dataclass(frozen=True)
class LlamaServerSettings:
    """Everything that decides a llama-server command line, from config and the model entry."""

    model_path: Path
    alias: str
    ctx_per_slot: int = 4096
    num_parallel: int = 4
    kv_pool: int = 0  # 0: each slot its own context; N: one KV pool of N contexts shared by the slots
    threads: int = 0
    cache_ram_mib: int = 256
    embedding: bool = False
    rerank: bool = False  # --rerank: rank pooling and /v1/rerank (llama-server turns embeddings on with it)
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    # From the model entry's [models."NAME".llama_server] table; None leaves llama-server's default.
    n_gpu_layers: int | None = None  # -1: all layers
    flash_attn: str | None = None  # "on", "off", "auto"
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    batch_size: int | None = None
    ubatch_size: int | None = None
    draft_model: Path | None = None  # speculative decoding
    mmproj: Path | None = None  # a vision projector (the model's projector layer or HF mmproj file)
    jinja: bool = True
    # llama.cpp RPC workers ("host:port", each an `enginehouse rpc-worker`): --rpc splits the model's
    # layers across them (and any local device) in proportion to the memory each reports free.
    rpc: tuple[str, ...] = ()

    @property
    def kv_contexts(self) -> int:
        """Per-slot contexts the KV cache holds: the pool (never more than one per slot), or one per slot."""
        return min(self.kv_pool, self.num_parallel) if self.kv_pool > 0 else self.num_parallel

    @property
    def shared_kv(self) -> bool:
        return self.kv_pool > 0

    @property
    def ctx_total(self) -> int:
        """Tokens of KV cache (``--ctx-size``)."""
        return self.ctx_per_slot * self.kv_contexts


# llama.cpp's default order (penalties;dry;top_n_sigma;top_k;...) runs the repetition penalties over
# the whole vocabulary: one hash lookup per token id, 49k for SmolLM2, about 0.6 ms of each 12 ms
# token on 2 cores (the bundled entry's repeat_penalty 1.1 cost 5% of its tokens/s). After top_k they
# see its k candidates. Penalties only lower logits, so the candidates differ only at the k-th edge,
# where top_p and a low temperature leave next to no probability, and a greedy pick only if all k fall
# below the (k+1)th. With top_k 0 (off) the penalties still see every token.
SAMPLER_ORDER = "top_k;penalties;dry;top_n_sigma;typ_p;top_p;min_p;xtc;temperature"


def build_argv(binary: Path, s: LlamaServerSettings, port: int) -> list[str]:
    argv = [
        str(binary),
        "--model",
        str(s.model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--alias",
        s.alias,
        "--ctx-size",
        str(s.ctx_total),
        "--parallel",
        str(s.num_parallel),
        "--cache-ram",
        str(s.cache_ram_mib),
        "--jinja" if s.jinja else "--no-jinja",  # the model's own chat template, with tool calls
        "--metrics",
        "--no-webui",
        "--samplers",  # a request's own "samplers" still wins
        SAMPLER_ORDER,
    ]
    if s.shared_kv:  # one pool for all slots; a request may still grow to ctx_per_slot, not to the pool
        argv += ["--kv-unified", "--kv-unified-per-slot", str(s.ctx_per_slot)]
    if s.threads > 0:
        argv += ["--threads", str(s.threads)]
    if s.rerank:
        argv += ["--rerank"]
    elif s.embedding:
        argv += ["--embeddings"]
    if s.n_gpu_layers is not None:
        argv += ["--n-gpu-layers", "all" if s.n_gpu_layers < 0 else str(s.n_gpu_layers)]
    if s.flash_attn:
        argv += ["--flash-attn", s.flash_attn]
    if s.cache_type_k:
        argv += ["--cache-type-k", s.cache_type_k]
    if s.cache_type_v:
        argv += ["--cache-type-v", s.cache_type_v]
    if s.batch_size:
        argv += ["--batch-size", str(s.batch_size)]
    if s.ubatch_size:
        argv += ["--ubatch-size", str(s.ubatch_size)]
    if s.draft_model is not None:
        argv += ["--model-draft", str(s.draft_model)]
    if s.mmproj is not None:
        argv += ["--mmproj", str(s.mmproj)]
    if s.rpc:  # needs a llama-server built with GGML_RPC=ON; others exit "RPC not supported in this build"
        argv += ["--rpc", ",".join(s.rpc)]
    return argv + list(s.extra_args)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def log_name(alias: str) -> str:
    """A file name for the runner log; model names are validated already, this only flattens them."""
    return _SAFE.sub("_", alias).strip("_") + ".log"


# llama-server's refusals of an input longer than an embedding runner takes (server-context.cpp): an
# encoder's micro-batch, its context, or a decoder's context (which must keep one token free).
_INPUT_LIMITS = (
    (re.compile(r"is too large to process.*batch size: (\d+)", re.S), 0),
    (re.compile(r"is larger than the max context size \((\d+) tokens\)"), 0),
    (re.compile(r"exceeds the available context size \((\d+) tokens\)"), 1),
)


def input_limit(message: str) -> int | None:
    """The most tokens one input may have, read from llama-server's refusal of a longer one."""
    for pattern, spare in _INPUT_LIMITS:
        if found := pattern.search(message):
            return int(found[1]) - spare
    return None


class LlamaServerEngine(Engine):
    kind = "llama-server"
    #: What the watchdog probes (sched/watchdog.py): /health is answered by the HTTP threads and stays green
    #: while the main loop is stuck; /slots is a task on the main loop's queue, answered between batches.
    stall_probe = "/slots"
    #: llama-server answers 500 to inputs its template or parser throws on; a dead or stuck runner shows
    #: as a dropped connection or to the watchdog instead.
    refused = EngineRefused

    def __init__(
        self,
        binary: Path,
        settings: LlamaServerSettings,
        *,
        log_dir: Path,
        ready_timeout: float = 300.0,
        nice: int = 0,
    ) -> None:
        self.binary = binary
        self.settings = settings
        # The runner answers only the gateway: any local process can reach its loopback port. The key goes
        # through the environment (LLAMA_API_KEY), which only this user can read, never argv, which `ps`
        # shows to everyone. llama-server leaves /health open, which is all the start-up probe needs.
        self.api_key = secrets.token_urlsafe(24)
        self._headers = {"Authorization": f"Bearer {self.api_key}"}
        self.capabilities = frozenset(
            {"rerank"}
            if settings.rerank
            else {"embedding"}
            if settings.embedding
            else {"completion", "tools"}
        )
        mode = "-rerank" if settings.rerank else "-embedding" if settings.embedding else ""
        self.process = ManagedProcess(
            f"llama-server[{settings.alias}]",
            lambda port: build_argv(binary, settings, port),
            log_path=log_dir / log_name(settings.alias + mode),
            ready_timeout=ready_timeout,
            restart=RestartPolicy(),
            # On an abort llama.cpp otherwise attaches gdb, whose backtrace fills the log tail that start
            # errors quote and pushes out the line that says what failed ("Failed to connect to HOST:PORT").
            env={"GGML_NO_BACKTRACE": "1", "LLAMA_API_KEY": self.api_key},
            health_headers=self._headers,
            nice=nice,
        )

    @property
    def base_url(self) -> str:
        return self.process.base_url

    @property
    def served_model(self) -> str:
        return self.settings.alias

    @property
    def request_headers(self) -> dict[str, str]:
        return self._headers

    @property
    def ready(self) -> bool:
        return self.process.state is State.READY

    async def ensure_ready(self, timeout: float | None = None) -> None:
        rpc = self.settings.rpc
        if rpc and self.process.state in (State.STOPPED, State.FAILED):
            # A worker that is down, busy with another llama-server, or behind a firewall that drops packets
            # is named here in seconds; llama-server would abort without its name, or wait out the timeout.
            await check_workers_async(rpc)
        try:
            await self.process.ensure_ready(timeout)
        except RunnerStartFailed as exc:
            if not rpc:
                raise
            named = await name_failed_workers(rpc, exc)  # e.g. one that vanished mid-load
            if named is exc:
                raise
            raise named from exc

    async def stop(self) -> None:
        await self.process.stop()

    async def count_tokens(
        self, call: ChatCall | CompletionCall, http: Upstream, extra: dict[str, str] | None = None
    ) -> int:
        """A chat through llama-server's own template (``/apply-template``, the body a generation would
        send), a rendered prompt as it is; then ``/tokenize`` as its completions tokenize a prompt
        (special tokens added and parsed)."""
        headers = self.headers(extra)
        prompt = call.prompt if isinstance(call, CompletionCall) else None
        if isinstance(call, ChatCall):
            _, body = chat_request(call, self.served_model)
            prompt = (
                await http.post_json(self.base_url + "/apply-template", body, headers, self.refused)
            ).get("prompt")
        body = {"content": prompt or "", "add_special": True, "parse_special": True}
        tokens = (await http.post_json(self.base_url + "/tokenize", body, headers, self.refused)).get(
            "tokens"
        )
        return len(tokens or [])

    def input_limit(self, refusal: EnginehouseError) -> int | None:
        """llama-server refuses an input longer than its context or, for an encoder, its micro-batch
        (with a 500): the limit is read from that refusal."""
        return input_limit(refusal.message)

    async def fit_input(
        self, item: str | list[int], limit: int, http: Upstream, extra: dict[str, str] | None
    ) -> str | list[int]:
        """A text as it is when it fits, else its first tokens with the special tokens the model puts
        around an input kept (a BERT's [CLS] ... [SEP], a last-token pooler's EOS); token ids as the base
        cuts them."""
        if not isinstance(item, str):
            return await super().fit_input(item, limit, http, extra)
        url, headers = self.base_url + "/tokenize", self.headers(extra)
        body = {"content": item, "add_special": True, "parse_special": True}
        full: list[int] = (await http.post_json(url, body, headers, self.refused))["tokens"]
        if len(full) <= limit:
            return item
        body["add_special"] = False
        plain: list[int] = (await http.post_json(url, body, headers, self.refused))["tokens"]
        lead = 0 if full[: len(plain[:1])] == plain[:1] else 1
        trail = max(len(full) - len(plain) - lead, 0)
        return full[: limit - trail] + full[len(full) - trail :] if trail else full[:limit]

    def kill(self, cause: str) -> bool:
        """The watchdog's remedy: SIGKILL the runner and start a fresh one (see ManagedProcess.kill)."""
        return self.process.kill(cause)

    def info(self) -> EngineInfo:
        p = self.process
        return EngineInfo(
            self.kind,
            p.state.name.lower(),
            p.base_url if p.port else "",
            p.pid,
            p.restarts,
            {
                "ctx_per_slot": self.settings.ctx_per_slot,
                "num_parallel": self.settings.num_parallel,
                "kv_tokens": self.settings.ctx_total,
                "n_gpu_layers": self.settings.n_gpu_layers,
                "log": str(p.log_path),
                "restart_cause": p.last_cause,
            },
        )
