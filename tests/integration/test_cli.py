"""The command line as a user types it, against a real server and runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from enginehouse.config import Config
from tests.conftest import MODEL

pytestmark = pytest.mark.slow


def eh(
    config: Config, *args: str, host: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ENGINEHOUSE_HOME": str(config.home),
        "ENGINEHOUSE_LLAMA_SERVER": str(config.llama_server),
        "ENGINEHOUSE_CONTEXT_LENGTH": "1024",
        "ENGINEHOUSE_NUM_PARALLEL": "2",
        "ENGINEHOUSE_CACHE_RAM_MIB": "64",
    }
    if host:
        env["ENGINEHOUSE_HOST"] = host
    return subprocess.run(
        [sys.executable, "-m", "enginehouse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_run_answers_through_the_running_server(server, server_config: Config) -> None:
    out = eh(
        server_config,
        "run",
        MODEL,
        "What is the capital of France?",
        "--verbose",
        host=f"127.0.0.1:{server.port}",
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "eval rate" in out.stderr


def test_run_without_a_server_starts_one_for_the_command(server_config: Config, tmp_path: Path) -> None:
    config = server_config.with_(home=tmp_path)
    out = eh(config, "run", MODEL, "What is the capital of France?", host="127.0.0.1:1")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_run_unknown_model_names_the_close_match(server, server_config: Config) -> None:
    out = eh(server_config, "run", "smollm:135m", "Hi", host=f"127.0.0.1:{server.port}")
    assert out.returncode == 1
    assert "not found" in out.stderr and "smollm2:135m" in out.stderr
    assert "Traceback" not in out.stderr


def test_list_show_cp_rm_round_trip(server_config: Config, tmp_path: Path) -> None:
    config = server_config.with_(home=tmp_path)
    listed = json.loads(eh(config, "list", "--json").stdout)
    assert [m["name"] for m in listed] == [MODEL]
    shown = json.loads(eh(config, "show", MODEL, "--json").stdout)
    assert shown["architecture"] == "llama" and shown["quantization"] == "Q4_1"
    assert eh(config, "cp", MODEL, "tiny").returncode == 0
    assert {m["name"] for m in json.loads(eh(config, "list", "--json").stdout)} == {MODEL, "tiny:latest"}
    assert eh(config, "rm", "tiny").returncode == 0
    assert [m["name"] for m in json.loads(eh(config, "list", "--json").stdout)] == [MODEL]
    bad = eh(config, "rm", "../../etc/passwd")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_every_command_has_help(server_config: Config) -> None:
    for args in (
        [],
        ["serve"],
        ["run"],
        ["list"],
        ["show"],
        ["rm"],
        ["cp"],
        ["import"],
        ["ps"],
        ["stop"],
        ["engines"],
        ["engines", "install"],
        ["engines", "list"],
    ):
        out = eh(server_config, *args, "--help", timeout=30)
        assert out.returncode == 0, (args, out.stderr)
        assert len(out.stdout.splitlines()) > 3


def test_ps_and_stop_against_the_running_server(server, server_config: Config) -> None:
    host = f"127.0.0.1:{server.port}"
    assert eh(server_config, "run", MODEL, "Hi", "--keepalive", "10m", host=host).returncode == 0
    listed = json.loads(eh(server_config, "ps", "--json", host=host).stdout)
    assert MODEL in [m["name"] for m in listed]
    table = eh(server_config, "ps", host=host).stdout
    assert MODEL in table and "from now" in table
    assert eh(server_config, "stop", MODEL, host=host).returncode == 0
    assert MODEL not in [m["name"] for m in json.loads(eh(server_config, "ps", "--json", host=host).stdout)]
