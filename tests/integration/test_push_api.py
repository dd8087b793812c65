"""`/api/push` and `enginehouse push` end to end: a model created through the server is pushed to a local
Ollama-protocol registry with the official client, and from the command line with its progress lines."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from enginehouse.config import Config
from enginehouse.server.runtime import BackgroundServer
from enginehouse.store import Store
from enginehouse.store.pull_ollama import pull_ollama
from tests.fakes.registry import FakeRegistry

pytestmark = pytest.mark.slow


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[FakeRegistry]:
    with FakeRegistry(tmp_path / "registry") as reg:
        yield reg


def test_push_through_the_api_then_pull_back(
    registry: FakeRegistry, server_config: Config, tmp_path: Path
) -> None:
    name = registry.name("you", "terse", "v1")
    config = server_config.with_(home=tmp_path / "home")
    with BackgroundServer(config) as srv:
        client = ollama.Client(host=srv.base_url)
        client.create(model=name, from_="smollm2:135m", system="Answer in one word.")
        events = list(client.push(name, insecure=True, stream=True))
        statuses = [e.status for e in events]
        assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
        assert "starting upload" in statuses
        big = [e for e in events if e.total and e.total > 90_000_000 and e.status.startswith("pushing ")]
        assert big and big[-1].completed == big[-1].total
        pushed = {e.digest for e in events if e.digest}

        again = client.push(name, insecure=True, stream=False)  # everything is there: HEADs and the manifest
        assert again.status == "success"

        with pytest.raises(ollama.ResponseError) as err:
            client.push("smollm2:135m", insecure=True)
        assert err.value.status_code == 400
        assert "push needs a registry name, e.g. registry.example.com/you/model:tag" in err.value.error
        with pytest.raises(ollama.ResponseError) as err:
            client.push(registry.name("you", "nope", "v1"), insecure=True)
        assert err.value.status_code == 404 and "not found" in err.value.error
        with pytest.raises(ollama.ResponseError) as err:
            client.push(name, stream=False)  # no insecure: https to a plain-http registry
        assert err.value.status_code == 502 and "Traceback" not in err.value.error

    fresh = Store(tmp_path / "fresh")  # pulled back: the same manifest, byte for byte, and so its digests
    rec = asyncio.run(pull_ollama(fresh, name, insecure=True))
    assert fresh.manifest_bytes(name)[1] == Store(config.models).manifest_bytes(name)[1]
    manifest = fresh.read_manifest(name)
    assert {e["digest"] for e in [*manifest["layers"], manifest["config"]]} == pushed
    assert rec.system == "Answer in one word."


def test_push_from_the_command_line(registry: FakeRegistry, tmp_path: Path) -> None:
    env = {**os.environ, "ENGINEHOUSE_HOME": str(tmp_path)}
    name = registry.name("you", "tiny", "v1")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "enginehouse", *args], env=env, capture_output=True, text=True, timeout=300
        )

    assert cli("cp", "smollm2:135m", name).returncode == 0
    out = cli("push", name, "--insecure")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()  # not a terminal: plain lines, no bars
    assert lines[0] == "retrieving manifest"
    assert any(line.startswith("starting upload of ") and "MB)" in line for line in lines)
    assert any(line.startswith("pushing ") and ": done (" in line for line in lines)
    assert lines[-3:-1] == ["pushing manifest", "success"]
    assert lines[-1].startswith(f"pushed {name} (") and "MB sent" in lines[-1]
    assert "\x1b[" not in out.stderr

    again = cli("push", name, "--insecure")
    assert again.returncode == 0 and "nothing to upload" in again.stderr and "already there" in again.stderr

    bare = cli("push", "smollm2:135m")
    assert bare.returncode == 1 and "Traceback" not in bare.stderr
    assert "push needs a registry name" in bare.stderr and "enginehouse cp" in bare.stderr
