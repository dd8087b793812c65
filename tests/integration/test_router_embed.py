"""The auto router's embedding tier with the real parts: the bundled all-MiniLM-L6-v2 converted by
llama.cpp's converter (installed like test_convert_bert.py does, the first time), served by a private
llama-server, classifying clear prompts that the keyword tier leaves to it; and `enginehouse route`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from enginehouse.config import Config
from enginehouse.config_auto_router import default_router
from enginehouse.routing.classify import Classifier, Decision
from enginehouse.routing.minilm import EMBED_MODEL, local_embedding_runner, prepare_cached
from enginehouse.store import Store
from tests.conftest import make_config
from tests.integration.test_convert_bert import converter_install  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

# Clear prompts that no keyword rule decides (checked below), so the embedding tier must.
CLEAR = [
    ("Why does my program crash when two threads append to the same list at once?", "code"),
    ("A bakery sells 120 loaves a day at 3 dollars each. How much does it earn in a week?", "math"),
    ("Could you help me put together a few heartfelt lines for my brother's graduation card?", "writing"),
    ("What is the best way to keep basil fresh in the kitchen?", "general"),
]
NOTHING = "jkl asdf qwer zxcv"


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory,
    user_config: Config,
    llama_server_bin: Path,
    converter_install,  # noqa: F811
) -> Config:
    """A private home whose engines dir is the developer's (where the converter is installed)."""
    return make_config(
        tmp_path_factory.mktemp("router-home"), llama_server_bin, engines_dir=user_config.engines
    )


def test_the_keyword_tier_leaves_these_to_the_embedding_tier() -> None:
    clf = Classifier(default_router())
    for prompt, _ in [*CLEAR, (NOTHING, "")]:
        assert clf.classify_keywords("", prompt) is None, prompt


def test_embedding_tier_with_the_real_runner(home: Config) -> None:
    async def go() -> tuple[bool, list[Decision], Decision, Decision]:
        async with local_embedding_runner(home) as embedder:
            clf = Classifier(default_router(), embedder, fail_open=False)
            cached = await prepare_cached(clf, home.cache / "router", EMBED_MODEL)
            decisions = [await clf.classify(None, prompt) for prompt, _ in CLEAR]
            nothing = await clf.classify(None, NOTHING)
            with_system = await clf.classify("You are a friendly gardening expert.", CLEAR[3][0])
            return cached, decisions, nothing, with_system

    cached, decisions, nothing, with_system = asyncio.run(go())
    assert cached is False  # a fresh home: the examples were embedded and saved
    assert list((home.cache / "router").glob("*.npy"))
    for (prompt, route), d in zip(CLEAR, decisions, strict=True):
        print(f"{route:<8} {d.elapsed_ms:6.2f} ms {d.scores}")
        assert (d.route, d.tier) == (route, "embedding"), (prompt, d.reason)
        assert d.scores[route] == max(d.scores.values())
    assert (nothing.route, nothing.tier) == ("general", "default"), nothing.reason
    assert (with_system.route, with_system.tier) == ("general", "embedding")
    assert Store(home.models).resolve(EMBED_MODEL).config["file_type"] == "Q8_0"


def test_cli_route_runs_the_embedding_tier(home: Config) -> None:
    env = {
        **os.environ,
        "ENGINEHOUSE_HOME": str(home.home),
        "ENGINEHOUSE_LLAMA_SERVER": str(home.llama_server),
        "ENGINEHOUSE_HOST": "127.0.0.1:1",  # never the developer's server
    }
    out = subprocess.run(
        [sys.executable, "-m", "enginehouse", "route", "--json", CLEAR[1][0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert (d["route"], d["tier"], d["embed_model"]) == ("math", "embedding", EMBED_MODEL)
    assert "runner_start_s" in d["setup"] and d["elapsed_ms"] > 0


def test_the_gateway_routes_auto_through_its_own_embedding_runner(home: Config) -> None:
    """`model: "auto"` on the gateway: its pinned embedding runner classifies what keywords leave."""
    import httpx

    from enginehouse.server.runtime import BackgroundServer
    from tests.conftest import MODEL

    with BackgroundServer(home) as srv:
        prompt, route = CLEAR[1]
        resp = httpx.post(
            srv.base_url + "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4},
            timeout=300,
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-enginehouse-route"] == f"auto/{route} (embedding)"
        assert resp.headers["x-enginehouse-model"] == MODEL and resp.json()["model"] == "auto"
        decision = httpx.post(srv.base_url + "/api/route", json={"prompt": CLEAR[3][0]}, timeout=60).json()
        assert (decision["route"], decision["tier"], decision["chosen"]) == ("general", "embedding", MODEL)
        assert decision["decision_ms"] < 1000
