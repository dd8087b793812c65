"""`/api/pull` and `enginehouse pull` end to end: a local Ollama-protocol registry serving the bundled
GGUF, pulled through the server with the official client, then answering a chat."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ollama
import pytest

from enginehouse.config import Config
from enginehouse.server.runtime import BackgroundServer
from tests.fakes.registry import FakeRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, bundled_gguf: Path):
    with FakeRegistry(tmp_path_factory.mktemp("registry")) as reg:
        reg.add_model(
            "library",
            "tiny",
            "latest",
            bundled_gguf,
            template=None,
            params={"temperature": 0, "stop": ["<|im_end|>"]},
        )
        yield reg


def test_pull_through_the_api_then_chat(
    registry: FakeRegistry, server_config: Config, tmp_path: Path
) -> None:
    with BackgroundServer(server_config.with_(home=tmp_path)) as srv:
        client = ollama.Client(host=srv.base_url)
        name = registry.name("library", "tiny", "latest")
        events = list(client.pull(name, insecure=True, stream=True))
        statuses = [e.status for e in events]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        assert {"verifying sha256 digest", "writing manifest"} <= set(statuses)
        big = [e for e in events if e.total and e.total > 90_000_000]
        assert big and big[-1].completed == big[-1].total
        assert name in [m.model for m in client.list().models]
        again = list(client.pull(name, insecure=True, stream=True))  # already there: manifest check only
        assert again[-1].status == "success"
        chat = client.chat(
            model=name,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            options={"num_predict": 16},
        )
        assert chat.message.content
        with pytest.raises(ollama.ResponseError) as err:
            client.pull(registry.name("library", "nope", "latest"), insecure=True)
        assert err.value.status_code == 404 and "not found" in err.value.error


def test_pull_from_the_command_line(registry: FakeRegistry, server_config: Config, tmp_path: Path) -> None:
    env = {**os.environ, "ENGINEHOUSE_HOME": str(tmp_path)}
    name = registry.name("library", "tiny", "latest")
    out = subprocess.run(
        [sys.executable, "-m", "enginehouse", "pull", name, "--insecure"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "pulled" in out.stderr and "success" in out.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "enginehouse", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "tiny" in listed.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "enginehouse", "pull", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )  # no --insecure: https is refused by a plain-http registry
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
