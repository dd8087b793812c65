"""Replica pools, end to end.

Balancing: three slow fake OpenAI-compatible upstreams (a fake only because a real engine cannot be made
slow on demand) pooled behind one gateway; twelve concurrent streams must spread evenly.

Nodes: two real enginehouse processes, each with its own home and the bundled model, bound to 127.0.0.2
and 127.0.0.3 (two hosts' stand-ins), behind a third gateway that pools them as ``[[nodes]]``. Both
nodes answer; a killed node is passed over without a client-visible error, cooled down, and re-admitted
once it is back; a drained node gets no new work until the drain is undone; the loop guard refuses a
request that comes back to a node it already passed, and routes around a node already on the path.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import ollama
import openai
import orjson
import pytest
from aiohttp import web

from enginehouse.cli.doctor import node_rows
from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL, make_config
from tests.fakes.slow_openai import VIA, SlowUpstreams
from tests.fakes.threaded import ThreadedApps

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 8, "seed": 1}
LONG = [{"role": "user", "content": "Count from 1 to 200, separated by commas."}]
HOSTS = {"b": "127.0.0.2", "c": "127.0.0.3"}
AT_B, AT_C = f"{MODEL}@b", f"{MODEL}@c"
COOLDOWN_S = 3.0  # [cooldown] seconds for the node pool (failures = 1)


def free_port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _loopback_alias_works(host: str) -> bool:
    try:
        free_port_on(host)
        return True
    except OSError:
        return False


# ---- balancing over three slow fakes --------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow() -> Iterator[SlowUpstreams]:
    with SlowUpstreams(3, delay=1.5) as fakes:
        yield fakes


@pytest.fixture(scope="module")
def pooled_gw(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, slow: SlowUpstreams
) -> Iterator[BackgroundServer]:
    home = tmp_path_factory.mktemp("pool-front")
    upstreams = "".join(
        f'\n[upstreams.{r.name}]\nengine = "openai"\nurl = "{r.url}"\nmodels = []\n' for r in slow.replicas
    )
    (home / "enginehouse.toml").write_text(
        upstreams
        + """
[models.pooled]
engine = "openai"
upstream = "s1"
remote_model = "x"
replicas = ["s1", "s2", "s3"]
balance = "least-outstanding"
"""
    )
    with BackgroundServer(make_config(home, llama_server_bin)) as srv:
        yield srv


def _stream_pooled(base_url: str, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """One streamed chat through the OpenAI door: (x-enginehouse-model, the text streamed)."""
    body = {"model": "pooled", "messages": HI, "stream": True}
    with httpx.stream(
        "POST", base_url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as resp:
        assert resp.status_code == 200, resp.read()
        text = ""
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                event = orjson.loads(line[6:])
                assert "error" not in event, event
                text += "".join(c["delta"].get("content") or "" for c in event["choices"])
        return resp.headers.get("x-enginehouse-model", ""), text


def _wave(base_url: str, slow: SlowUpstreams, n: int) -> tuple[list[list[int]], list[tuple[str, str]]]:
    """``n`` concurrent streams; the fakes' in-flight counts sampled while all ``n`` are held."""
    slow.reset()
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(_stream_pooled, base_url) for _ in range(n)]
        deadline = time.monotonic() + 10
        while sum(slow.in_flight()) < n:  # every request has reached a fake
            assert time.monotonic() < deadline, f"only {slow.in_flight()} in flight"
            assert not any(f.done() for f in futures), [f.result() for f in futures if f.done()]
            time.sleep(0.01)
        samples: list[list[int]] = []
        while len(samples) < 8 and sum(loads := slow.in_flight()) == n:
            samples.append(loads)
            time.sleep(0.05)
        return samples, [f.result() for f in futures]


@pytest.mark.parametrize("wave", ["cold", "warm"])
def test_least_outstanding_keeps_three_replicas_within_one(
    pooled_gw: BackgroundServer, slow: SlowUpstreams, wave: str
) -> None:
    """Twelve concurrent streams over three slow replicas: 4 each, never more than one apart. "cold":
    the gateway's first requests to the pool (run first on a fresh gateway); "warm": again."""
    n = 12
    samples, results = _wave(pooled_gw.base_url, slow, n)
    assert len(samples) >= 3, samples
    for loads in samples:
        assert max(loads) - min(loads) <= 1, f"{wave}: in flight at s1, s2, s3 over time: {samples}"
    served = [r.served for r in slow.replicas]
    assert sum(served) == n and all(3 <= s <= 5 for s in served), served
    assert all(r.peak <= 5 for r in slow.replicas), [r.peak for r in slow.replicas]
    # Each answer names the member that answered, and that member's fake wrote it.
    assert {member for member, _ in results} == {"pooled@s1", "pooled@s2", "pooled@s3"}
    for member, text in results:
        assert member == f"pooled@{text}", results
    assert Counter(text for _, text in results) == {r.name: r.served for r in slow.replicas}


def test_forwarded_requests_name_the_gateway_in_the_loop_guard_header(
    pooled_gw: BackgroundServer, slow: SlowUpstreams
) -> None:
    version = httpx.get(pooled_gw.base_url + "/api/version").json()
    own = version["node"]
    assert isinstance(own, str) and own and version["version"]
    slow.reset()
    _stream_pooled(pooled_gw.base_url)
    _stream_pooled(pooled_gw.base_url, headers={VIA: "elsewhere"})
    seen = [v for r in slow.replicas for v in r.via]
    assert sorted(seen, key=len) == [own, f"elsewhere,{own}"]
    refused = httpx.post(
        pooled_gw.base_url + "/v1/chat/completions",
        json={"model": "pooled", "messages": HI},
        headers={VIA: f"elsewhere,{own}"},
        timeout=30,
    )
    assert refused.status_code == 508 and refused.json()["error"]["message"], refused.text
    assert sum(len(r.via) for r in slow.replicas) == 2  # refused before any replica was asked


def test_a_replica_dying_mid_stream_ends_in_an_explicit_error_on_both_doors(
    pooled_gw: BackgroundServer, slow: SlowUpstreams
) -> None:
    """After the first byte nothing is retried on another replica: the client reads an error."""
    slow.reset()
    for r in slow.replicas:
        r.cut = True
    try:
        body = {"model": "pooled", "messages": HI, "stream": True}
        with httpx.stream("POST", pooled_gw.base_url + "/v1/chat/completions", json=body, timeout=60) as resp:
            assert resp.status_code == 200 and resp.headers["x-enginehouse-model"].startswith("pooled@")
            assert "x-enginehouse-fallback" not in resp.headers
            events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
        assert '"content":"s' in events[0]
        assert "error" in orjson.loads(events[-1]), events
        with httpx.stream("POST", pooled_gw.base_url + "/api/chat", json=body, timeout=60) as resp:
            assert resp.status_code == 200 and "x-enginehouse-fallback" not in resp.headers
            lines = [orjson.loads(line) for line in resp.iter_lines() if line]
        assert lines[0]["message"]["content"].startswith("s") and "error" in lines[-1], lines
        assert sum(len(r.via) for r in slow.replicas) == 2  # one replica each, no retry
    finally:
        slow.reset()


# ---- two real nodes behind a third ----------------------------------------------------------------------
@dataclass
class Node:
    """``enginehouse serve`` as a process of its own, bound to ``host`` (another loopback address)."""

    name: str
    host: str
    home: Path
    llama_server: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Node:
        """Start (or restart on the same home and port) and wait until the model is loaded."""
        if not self.port:
            self.port = free_port_on(self.host)
        env = {
            **os.environ,
            "ENGINEHOUSE_HOME": str(self.home),
            "ENGINEHOUSE_HOST": f"{self.host}:{self.port}",
            "ENGINEHOUSE_LLAMA_SERVER": str(self.llama_server),
            "ENGINEHOUSE_NUM_PARALLEL": "2",
            "ENGINEHOUSE_CONTEXT_LENGTH": "1024",
            "ENGINEHOUSE_CACHE_RAM_MIB": "64",
            "ENGINEHOUSE_THREADS": "1",  # two nodes on one 2-core machine: 2 threads each would spin-wait
        }
        self._log = (self.home / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enginehouse", "serve", "--preload", MODEL],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, f"node {self.name} exited:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"node {self.name} never loaded {MODEL}:\n{self.log_tail()}"
            try:
                models = httpx.get(self.url + "/api/ps", timeout=2).json()["models"]
                if models and models[0].get("state") == "ready":
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_log()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 3000) -> str:
        path = self.home / "serve.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path) -> Iterator[dict[str, Node]]:
    for host in HOSTS.values():
        if not _loopback_alias_works(host):
            pytest.skip(f"cannot bind {host} here (only Linux routes all of 127.0.0.0/8 to loopback)")
    started: dict[str, Node] = {}
    try:
        for name, host in HOSTS.items():
            started[name] = Node(name, host, tmp_path_factory.mktemp(f"node-{name}"), llama_server_bin)
        for node in started.values():
            node.start()
        yield started
    finally:
        for node in started.values():
            node.stop()


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, nodes: dict[str, Node]
) -> Iterator[BackgroundServer]:
    home = tmp_path_factory.mktemp("front")
    (home / "enginehouse.toml").write_text(
        f"""
[[nodes]]
name = "b"
url = "{nodes["b"].url}"

[[nodes]]
name = "c"
url = "{nodes["c"].url}"

[models."{MODEL}"]
replicas = ["b", "c"]
balance = "least-outstanding"

[pools]
probe_interval = 1.0
probe_timeout = 1.0

[cooldown]
failures = 1
window = 30
seconds = {COOLDOWN_S}
max_seconds = {2 * COOLDOWN_S}
"""
    )
    with BackgroundServer(make_config(home, llama_server_bin)) as srv:
        yield srv


class Answered:
    """Records the routing headers of every chat answer an official client receives."""

    def __init__(self) -> None:
        self.members: list[str] = []
        self.fallbacks: list[str | None] = []

    def hook(self, response: httpx.Response) -> None:
        if response.request.url.path.endswith(("/api/chat", "/api/generate", "/chat/completions")):
            self.add(response.headers)

    def add(self, headers: Any) -> None:
        self.members.append(headers.get("x-enginehouse-model", ""))
        self.fallbacks.append(headers.get("x-enginehouse-fallback"))


def ollama_client(base_url: str, answered: Answered) -> ollama.Client:
    return ollama.Client(host=base_url, timeout=120, event_hooks={"response": [answered.hook]})


def openai_client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(front: BackgroundServer, answered: Answered, headers: dict[str, str] | None = None) -> str:
    """One chat through the front's Ollama door: the member that answered."""
    client = ollama.Client(
        host=front.base_url, timeout=120, headers=headers, event_hooks={"response": [answered.hook]}
    )
    reply = client.chat(model=MODEL, messages=HI, options=GREEDY)
    assert reply.model == MODEL and reply.message.content and reply.done
    return answered.members[-1]


def pool_entry(front: BackgroundServer) -> dict[str, Any]:
    ps = httpx.get(front.base_url + "/api/ps", timeout=10).json()
    (entry,) = [p for p in ps["pools"] if p["model"] == MODEL]
    return entry


def replica(front: BackgroundServer, node: str) -> dict[str, Any]:
    (found,) = [r for r in pool_entry(front)["replicas"] if r["node"] == node]
    return found


def test_requests_through_the_front_are_answered_by_both_nodes(front: BackgroundServer) -> None:
    answered = Answered()
    oc = ollama_client(front.base_url, answered)
    replies = [oc.chat(model=MODEL, messages=HI, options=GREEDY) for _ in range(4)]
    for reply in replies:
        assert reply.model == MODEL and reply.message.content and reply.eval_count > 0
    assert len({r.message.content for r in replies}) == 1  # the same model on both: the same greedy answer
    oai = openai_client(front.base_url)
    for stream in (False, True):
        raw = oai.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=HI,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
            stream=stream,
        )
        answered.add(raw.headers)
        parsed = raw.parse()
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)  # type: ignore[union-attr]
        else:
            assert parsed.choices[0].message.content and parsed.model  # type: ignore[union-attr]
    # Sequential requests: always a tie on in-flight counts, and ties go round-robin.
    assert Counter(answered.members) == {AT_B: 3, AT_C: 3}, answered.members
    assert answered.fallbacks == [None] * 6
    entry = pool_entry(front)
    assert entry["balance"] == "least-outstanding"
    assert {(r["name"], r["node"]) for r in entry["replicas"]} == {(AT_B, "b"), (AT_C, "c")}
    for r in entry["replicas"]:
        assert r["in_flight"] == 0 and r["draining"] is False and r["cooled_until"] is None, r


def _long_chat(base_url: str, started: threading.Event, out: dict[str, Any]) -> None:
    body = {"model": MODEL, "messages": LONG, "options": {"temperature": 0, "num_predict": 64}}
    with httpx.stream("POST", base_url + "/api/chat", json=body, timeout=120) as resp:
        out["member"] = resp.headers.get("x-enginehouse-model")
        started.set()
        lines = [orjson.loads(line) for line in resp.iter_lines() if line]
    out["ended"] = time.monotonic()
    out["last"] = lines[-1]


def test_drain_waits_for_in_flight_requests_then_sends_nothing_until_undone(
    front: BackgroundServer,
) -> None:
    # One long request on each node (least-outstanding: the second goes to the idle one).
    runs: list[tuple[threading.Thread, threading.Event, dict[str, Any]]] = []
    for _ in range(2):
        started, out = threading.Event(), {}
        thread = threading.Thread(target=_long_chat, args=(front.base_url, started, out))
        thread.start()
        assert started.wait(60)
        runs.append((thread, started, out))
    assert {out["member"] for _, _, out in runs} == {AT_B, AT_C}
    drained = httpx.post(front.base_url + "/api/drain", json={"node": "c"}, timeout=120)
    answered_at = time.monotonic()
    for thread, _, _ in runs:
        thread.join(120)
    assert drained.status_code == 200, drained.text
    assert drained.json() == {"node": "c", "draining": True, "in_flight": 0}
    (on_c,) = [out for _, _, out in runs if out["member"] == AT_C]
    assert on_c["ended"] <= answered_at, "the drain answered before c's request finished"
    assert on_c["last"]["done"] and "error" not in on_c["last"]  # drained, not cut off
    assert replica(front, "c")["draining"] is True and replica(front, "b")["draining"] is False

    answered = Answered()
    assert [ask(front, answered) for _ in range(4)] == [AT_B] * 4

    undone = httpx.post(front.base_url + "/api/drain", json={"node": "c", "undo": True}, timeout=30)
    assert undone.status_code == 200, undone.text
    assert undone.json().get("node") == "c"
    assert replica(front, "c")["draining"] is False
    assert AT_C in {ask(front, answered) for _ in range(3)}

    # The same through the CLI.
    env = {
        **os.environ,
        "ENGINEHOUSE_HOST": f"127.0.0.1:{front.port}",
        "ENGINEHOUSE_HOME": str(front.config.home),
    }
    cli = [sys.executable, "-m", "enginehouse", "drain", "c"]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert replica(front, "c")["draining"] is True
    assert [ask(front, answered) for _ in range(2)] == [AT_B] * 2
    done = subprocess.run([*cli, "--undo"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert replica(front, "c")["draining"] is False


def test_loop_guard(front: BackgroundServer, nodes: dict[str, Node]) -> None:
    b = nodes["b"]
    b_id = httpx.get(b.url + "/api/version").json()["node"]
    front_id = httpx.get(front.base_url + "/api/version").json()["node"]
    assert isinstance(b_id, str) and b_id and front_id != b_id
    chat = {"model": MODEL, "messages": HI, "stream": False, "options": GREEDY}
    r = httpx.post(b.url + "/api/chat", json=chat, headers={VIA: b_id}, timeout=30)
    assert r.status_code == 508 and isinstance(r.json()["error"], str) and r.json()["error"], r.text
    r = httpx.post(
        b.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": HI, "max_tokens": 4},
        headers={VIA: f"somewhere,{b_id}"},
        timeout=30,
    )
    assert r.status_code == 508 and r.json()["error"]["message"], r.text
    r = httpx.post(front.base_url + "/api/chat", json=chat, headers={VIA: front_id}, timeout=30)
    assert r.status_code == 508, r.text
    # A request that already passed node b is never sent back to it: the front uses c only.
    answered = Answered()
    assert [ask(front, answered, headers={VIA: b_id}) for _ in range(4)] == [AT_C] * 4
    assert answered.fallbacks == [None] * 4
    # Routed around, not counted as a failure; and the pool itself still has both replicas.
    members = [r["name"] for r in pool_entry(front)["replicas"]]
    assert members == [AT_B, AT_C], f"/api/ps pool after requests that passed b: {members}"
    assert replica(front, "b")["cooled_until"] is None


def test_a_killed_node_is_passed_over_cooled_down_and_readmitted(
    front: BackgroundServer, nodes: dict[str, Node]
) -> None:
    b = nodes["b"]
    b.kill()
    answered = Answered()
    oai = openai_client(front.base_url)
    for _ in range(2):  # ties go round-robin: one of these two is sent to b first (unless a probe was)
        raw = oai.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=8)  # type: ignore[arg-type]
        answered.add(raw.headers)
        assert raw.parse().choices[0].message.content  # no client-visible error
    # Cooled down now: by a request's failure (failures = 1) or by an active probe before it.
    ps = httpx.get(front.base_url + "/api/ps").json()
    cooled = {c["name"]: c for c in ps["cooled_down"]}
    assert AT_B in cooled and cooled[AT_B]["reason"] and cooled[AT_B]["until"], ps["cooled_down"]
    assert replica(front, "b")["cooled_until"] is not None
    metrics = httpx.get(front.base_url + "/metrics").text
    assert f'enginehouse_cooled_down_until_seconds{{target="{AT_B}"}}' in metrics
    for _ in range(2):
        ask(front, answered)
    assert answered.members == [AT_C] * 4, answered.members
    assert set(answered.fallbacks) <= {None, f"{AT_B}, {AT_C}"}, answered.fallbacks

    b.start()  # same home, same port
    deadline = time.monotonic() + 4 * COOLDOWN_S + 20
    while ask(front, answered) != AT_B:
        assert time.monotonic() < deadline, f"b was never re-admitted: {answered.members}"
        time.sleep(0.3)
    assert AT_B not in {c["name"] for c in httpx.get(front.base_url + "/api/ps").json()["cooled_down"]}
    assert replica(front, "b")["cooled_until"] is None
    assert Counter(ask(front, answered) for _ in range(4)) == {AT_B: 2, AT_C: 2}


def test_loop_guard_knows_a_restarted_node_by_its_new_id(
    front: BackgroundServer, nodes: dict[str, Node]
) -> None:
    """A node that restarts may come back with another id; the front must not send it a request that
    already passed it (that would cost a 508 and a failure against the node's health)."""
    b = nodes["b"]
    b.stop()
    b.start()
    answered = Answered()
    deadline = time.monotonic() + 4 * COOLDOWN_S + 20
    while ask(front, answered) != AT_B:  # back in the pool
        assert time.monotonic() < deadline, f"b was never re-admitted: {answered.members}"
        time.sleep(0.3)
    b_id = httpx.get(b.url + "/api/version").json()["node"]
    routed = Answered()
    assert [ask(front, routed, headers={VIA: b_id}) for _ in range(3)] == [AT_C] * 3
    assert routed.fallbacks == [None] * 3, routed.fallbacks
    assert AT_B not in {c["name"] for c in httpx.get(front.base_url + "/api/ps").json()["cooled_down"]}


class Junk(ThreadedApps):
    """Not an enginehouse: a web page on every path, and one path that never answers."""

    thread_name = "junk-node"

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>router admin</html>", content_type="text/html")

    async def hang(self, request: web.Request) -> web.Response:
        await asyncio.sleep(60)
        return web.Response(text="late")

    async def start_async(self) -> None:
        junk, slow_app = web.Application(), web.Application()
        junk.router.add_route("*", "/{tail:.*}", self.page)
        slow_app.router.add_route("*", "/{tail:.*}", self.hang)
        self.junk_port, self.slow_port = await self.serve((junk, 0), (slow_app, 0))


def test_a_node_that_is_no_enginehouse_or_too_slow_is_named_not_hung(
    tmp_path: Path, llama_server_bin: Path
) -> None:
    fake = Junk().start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        (home / "enginehouse.toml").write_text(
            f'[[nodes]]\nname = "junk"\nurl = "http://127.0.0.1:{fake.junk_port}"\n'
            f'[[nodes]]\nname = "sloth"\nurl = "http://127.0.0.1:{fake.slow_port}"\n'
            '[models.far]\nreplicas = ["junk"]\n[models.slow]\nreplicas = ["sloth"]\n'
        )
        with BackgroundServer(make_config(home, llama_server_bin)) as srv:
            chat = {"model": "far", "messages": HI, "stream": False}
            r = httpx.post(srv.base_url + "/api/chat", json=chat, timeout=60)
            assert r.status_code == 502 and "'junk'" in r.json()["error"], r.text
            assert "did not answer JSON" in r.json()["error"]
            started = time.monotonic()
            r = httpx.post(srv.base_url + "/v1/chat/completions", json={**chat, "model": "slow"}, timeout=60)
            assert r.status_code == 502 and "'sloth'" in r.json()["error"]["message"], r.text
            assert time.monotonic() - started < 30  # the upstream check's own timeout, not the client's
            doctor_rows = {row["name"]: row for row in node_rows(srv.config, timeout=1)}
            assert doctor_rows["junk"]["ok"] is False and doctor_rows["sloth"]["ok"] is False
    finally:
        fake.stop()
