"""``enginehouse bench`` as typed, against a real llama-server and a real enginehouse gateway, and
against targets that fail (refused, HTTP 500) or stall (accept and never answer)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from enginehouse.config import Config
from enginehouse.engines.llama_server import LlamaServerSettings, build_argv
from tests.conftest import MODEL, free_port, wait_http

pytestmark = pytest.mark.slow

ALIAS = "direct-smollm2"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def llama_server(llama_server_bin: Path, bundled_gguf: Path) -> Iterator[str]:
    """llama-server alone, as a user would run it: the OpenAI base URL."""
    port = free_port()
    settings = LlamaServerSettings(bundled_gguf, ALIAS, ctx_per_slot=512, num_parallel=2, cache_ram_mib=64)
    proc = subprocess.Popen(
        build_argv(llama_server_bin, settings, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(30)


class FakeUpstreams:
    """One aiohttp app on its own thread: /fail answers 500, /stall accepts and never answers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    async def _start(self) -> web.AppRunner:
        async def fail(request: web.Request) -> web.Response:
            return web.json_response({"error": {"message": "engine exploded"}}, status=500)

        async def stall(request: web.Request) -> web.Response:
            await asyncio.sleep(3600)
            return web.Response()

        app = web.Application()
        app.router.add_post("/fail/v1/chat/completions", fail)
        app.router.add_post("/stall/v1/chat/completions", stall)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        return runner

    def __enter__(self) -> FakeUpstreams:
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _stop(self) -> None:
        for task in asyncio.all_tasks():  # the stalled handlers, which would never end
            if task is not asyncio.current_task():
                task.cancel()
        await self.runner.cleanup()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def bench(config: Config, *args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ENGINEHOUSE_HOME": str(config.home),
        "ENGINEHOUSE_LLAMA_SERVER": str(config.llama_server),
        "ENGINEHOUSE_CACHE_RAM_MIB": "64",
    }
    return subprocess.run(
        [sys.executable, "-m", "enginehouse", "bench", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def check_sane(row: dict, output_len: int) -> None:
    """Every metric present, in range, and consistent with the others."""
    assert row["completed"] > 0 and row["errors"] == 0, row
    assert 0 < row["mean_output_tokens"] <= output_len
    assert row["output_tokens_from"] == ["server"]  # usage / eval_count were reported
    assert row["request_throughput"] > 0 and row["output_throughput"] > row["request_throughput"]
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        m = row[key]
        assert set(m) == {"mean", "p50", "p90", "p95", "p99"}, key
        assert 0 < m["p50"] <= m["p90"] <= m["p95"] <= m["p99"], (key, m)
    assert row["ttft_ms"]["p99"] < row["e2e_ms"]["p99"]
    assert row["mean_input_tokens"] > 0


def test_bench_llama_server_and_both_gateway_doors(
    server, server_config: Config, llama_server: str, tmp_path: Path
) -> None:
    out_json, out_html, out_png = tmp_path / "r.json", tmp_path / "r.html", tmp_path / "r.png"
    result = bench(
        server_config,
        *("-t", f"direct:openai={llama_server}"),
        *("-t", f"eh-openai:openai={server.base_url}/v1"),
        *("-t", f"eh-ollama:ollama={server.base_url}"),
        *("-m", MODEL, "-m", f"direct={ALIAS}"),
        *("-c", "1,2", "-n", "2", "--input-len", "32", "--output-len", "16"),
        *("--slo", "ttft_ms=60000", "--slo", "tpot_ms=60000", "--compare"),
        *("--json", str(out_json), "--html", str(out_html), "--png", str(out_png)),
    )
    assert result.returncode == 0, result.stderr
    assert "TTFT p50" in result.stdout and "eh-ollama" in result.stdout
    report = json.loads(out_json.read_text())
    assert report["workload"]["token_exact"] and report["workload"]["tokenizer"] == "direct"
    assert [t["label"] for t in report["targets"]] == ["direct", "eh-openai", "eh-ollama"]
    assert {(r["target"], r["level"]) for r in report["results"]} == {
        (t, c) for t in ("direct", "eh-openai", "eh-ollama") for c in (1, 2)
    }
    for row in report["results"]:
        check_sane(row, 16)
        assert row["good_requests"] == row["completed"]  # bounds no request can miss
        assert row["goodput"] == pytest.approx(row["request_throughput"])
    # The direct target's prompts are token-exact: its server counts 32 user tokens plus the template.
    direct = [r for r in report["results"] if r["target"] == "direct"]
    assert all(32 < r["mean_input_tokens"] < 32 + 40 for r in direct)
    ratios = {(c["target"], c["level"]): c for c in report["comparison"]}
    assert set(ratios) == {(t, c) for t in ("eh-openai", "eh-ollama") for c in (1, 2)}
    assert all(
        c["output_throughput_ratio"] > 0 and c["ttft_p50_diff_ms"] is not None for c in ratios.values()
    )
    page = out_html.read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page and "eh-ollama" in page
    assert out_png.read_bytes().startswith(PNG_MAGIC)


def test_bench_reports_failing_and_stalled_targets_without_hanging(
    server_config: Config, llama_server: str, tmp_path: Path
) -> None:
    with FakeUpstreams() as fakes:
        start = time.monotonic()
        result = bench(
            server_config,
            *("-t", f"direct:openai={llama_server}"),
            *("-t", f"refused:openai=http://127.0.0.1:{free_port()}/v1"),
            *("-t", f"http500:openai=http://127.0.0.1:{fakes.port}/fail/v1"),
            *("-t", f"stalled:openai=http://127.0.0.1:{fakes.port}/stall/v1"),
            *("-m", ALIAS, "-c", "1,2", "-n", "2", "--output-len", "8", "--input-len", "16"),
            # Long enough for the real runner on a busy 2-core machine; the stalled target costs it once.
            *("--timeout", "20", "--json", "-"),
            timeout=200,
        )
        elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # --json -: the JSON alone on stdout, the table on stderr
    rows = {(r["target"], r["level"]): r for r in report["results"]}
    check_sane(rows["direct", 1], 8)
    check_sane(rows["direct", 2], 8)
    for label, message in (
        ("refused", "connect"),
        ("http500", "HTTP 500: engine exploded"),
        ("stalled", "timed out"),
    ):
        first, second = rows[label, 1], rows[label, 2]
        assert first["completed"] == 0
        assert first["warmup"]["errors"] == first["warmup"]["requests"] == 1
        assert first["skipped"] and message in first["skipped"], first
        assert second["skipped"], second  # not tried again at the next level
    # The stalled target cost one --timeout (its single warm-up request), not one per request.
    assert elapsed < 150
    assert "stalled" in result.stderr and "timed out after 20s" in result.stderr


def test_bench_engines_starts_llama_server_and_enginehouse(server_config: Config, tmp_path: Path) -> None:
    out_json = tmp_path / "engines.json"
    result = bench(
        server_config,
        *("--engines", "-m", MODEL, "-c", "1", "-n", "2", "--warmup", "1"),
        *("--input-len", "16", "--output-len", "8", "--json", str(out_json)),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out_json.read_text())
    assert [t["label"] for t in report["targets"]] == [
        "llama-server",
        "enginehouse-openai",
        "enginehouse-ollama",
    ]
    for row in report["results"]:
        check_sane(row, 8)
    assert {c["target"] for c in report["comparison"]} == {"enginehouse-openai", "enginehouse-ollama"}
    engines = {e["name"]: e["status"] for e in report["engines"]}
    assert set(engines) >= {"llama-server", "enginehouse", "vLLM", "Ollama"}
    assert engines["vLLM"] == "not installed here" or "installed here" in engines["vLLM"]
    assert "tok/s ×" in result.stdout
