"""No error answer carries a server path, a traceback or a Python exception class name, on any endpoint,
in either door's shape: every error path we know, against a real server and a real runner."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginehouse.server.protocol import door_of
from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL, make_config

pytestmark = pytest.mark.slow

CLASS_NAME = re.compile(r"\b(?:[A-Z][a-z0-9]+)+(?:Error|Exception)\b")
MISSING = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, bundled_gguf: Path
) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("eh-leaks")
    config = make_config(home, llama_server_bin, max_body_mib=1)
    # A model whose file passes our checks but that llama-server refuses: an unknown architecture.
    data = bytearray(bundled_gguf.read_bytes())
    at = data.index(b"general.architecture") + len(b"general.architecture")
    value = data.index(b"llama", at)
    data[value : value + 5] = b"llamx"
    corrupt = home / "corrupt.gguf"
    corrupt.write_bytes(data)
    with BackgroundServer(config) as server:
        server.gateway.store.import_gguf(corrupt, "corrupt:latest")
        yield server


def assert_clean(srv: BackgroundServer, resp: httpx.Response, what: str) -> None:
    """The body is an error in the door's own shape and names nothing of the server's insides."""
    assert resp.status_code >= 400 or b'"error"' in resp.content, what
    text = resp.text
    for secret in (str(srv.config.home), str(srv.config.models), str(Path.home()) + "/", "/tmp/"):
        assert secret not in text, f"{what}: {secret} in {text[:300]}"
    for marker in ("Traceback", 'File "'):
        assert marker not in text, f"{what}: {text[:300]}"
    assert not CLASS_NAME.search(text), f"{what}: {text[:300]}"
    if resp.request.method == "HEAD" or not text:
        return
    last = json.loads(text.strip().splitlines()[-1].removeprefix("data: "))
    door = door_of(resp.request.url.path)
    if door == "openai":
        assert set(last["error"]) >= {"message", "type", "param", "code"}, what
    elif door == "anthropic":
        assert last["type"] == "error" and set(last["error"]) >= {"type", "message"}, what
    else:
        assert isinstance(last["error"], str) and last["error"], what


def call(srv: BackgroundServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    resp = httpx.request(method, srv.base_url + path, timeout=120, **kwargs)
    assert_clean(srv, resp, f"{method} {path} {kwargs}"[:300])
    return resp


def test_create_errors_name_no_path(srv: BackgroundServer) -> None:
    bad = b"GGUF" + bytes(range(256)) * 8
    digest = "sha256:" + hashlib.sha256(bad).hexdigest()
    assert httpx.post(f"{srv.base_url}/api/blobs/{digest}", content=bad).status_code in (200, 201)
    for stream in (False, True):
        resp = call(
            srv, "POST", "/api/create", json={"model": "bad", "files": {"m.gguf": digest}, "stream": stream}
        )
        assert "not a valid GGUF file" in resp.text
    bodies = [
        {"model": "bad", "from": MISSING},
        {"model": "bad", "files": {"m.gguf": MISSING}},
        {"model": "bad", "files": {"m.gguf": "sha256:nothex"}},
        {"model": "bad", "modelfile": "FROM /tmp/enginehouse-missing/model.gguf"},
        {"model": "bad", "modelfile": "FROM ./model.gguf"},
        {"model": "bad", "modelfile": "FROM /etc/passwd"},
        {"model": "bad", "modelfile": f"FROM {srv.config.models}/blobs/{MISSING.replace(':', '-')}"},
        {"model": "bad", "modelfile": f"FROM {MODEL}\nADAPTER /root/adapter.gguf"},
        {"model": "bad", "from": MODEL, "adapters": {"a.gguf": MISSING}},
        {"model": "../../etc", "from": MODEL},
        {"model": "bad"},
    ]
    for body in bodies:
        call(srv, "POST", "/api/create", json=body)
        call(srv, "POST", "/api/create", json={**body, "stream": False})


def test_blob_pull_and_model_errors_name_no_path(srv: BackgroundServer) -> None:
    call(srv, "POST", "/api/blobs/sha256:bad", content=b"x")
    call(srv, "POST", f"/api/blobs/{MISSING}", content=b"not what the digest says")
    call(srv, "HEAD", "/api/blobs/md5:abc")
    for stream in (True, False):
        body = {"model": "127.0.0.1:9/library/nothing:latest", "insecure": True, "stream": stream}
        call(srv, "POST", "/api/pull", json=body)
        call(srv, "POST", "/api/pull", json={"model": "bad name!", "stream": stream})
    srv.gateway.store.copy(MODEL, "127.0.0.1:9/you/pushed:v1")  # nothing listens on port 9
    for stream in (True, False):
        for model in ("127.0.0.1:9/you/pushed:v1", "127.0.0.1:9/you/nothing:v1", MODEL, "bad name!"):
            for insecure in (True, False):
                body = {"model": model, "insecure": insecure, "stream": stream}
                call(srv, "POST", "/api/push", json=body)
    for path, body in [
        ("/api/chat", {"model": "nope", "messages": []}),
        ("/api/generate", {"model": "nope", "prompt": "x"}),
        ("/api/show", {"model": "nope"}),
        ("/api/copy", {"source": "nope", "destination": "x"}),
        ("/api/embed", {"model": "nope", "input": "x"}),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        ("/v1/completions", {"model": "nope", "prompt": "x"}),
        ("/v1/embeddings", {"model": "nope", "input": "x"}),
    ]:
        call(srv, "POST", path, json=body)
    call(srv, "DELETE", "/api/delete", json={"model": "nope"})
    call(srv, "GET", "/v1/models/nope")


def test_a_runner_that_fails_to_start_names_no_path(srv: BackgroundServer) -> None:
    for stream in (False, True):
        resp = call(
            srv,
            "POST",
            "/api/chat",
            json={"model": "corrupt", "messages": [{"role": "user", "content": "x"}], "stream": stream},
        )
        assert resp.status_code >= 500 or b"error" in resp.content
        call(
            srv,
            "POST",
            "/v1/chat/completions",
            json={"model": "corrupt", "messages": [{"role": "user", "content": "x"}], "stream": stream},
        )
        call(srv, "POST", "/api/generate", json={"model": "corrupt", "prompt": "x", "stream": stream})


def test_http_level_errors_name_no_path(srv: BackgroundServer) -> None:
    for path in ("/api/nope", "/v1/nope", "/api/tags/../../etc/passwd"):
        call(srv, "GET", path)
    call(srv, "GET", "/api/chat")
    call(srv, "PUT", "/api/tags")
    call(srv, "DELETE", "/v1/chat/completions")
    big = b'{"model": "' + b"x" * (2 << 20) + b'"}'
    for path in ("/api/chat", "/v1/chat/completions", "/api/create"):
        assert call(srv, "POST", path, content=big).status_code == 413
        for raw in (b"{", b"[1, 2]", b"\xff\xfe", b'{"model": "x", "messages": "nope"}', b"null"):
            call(srv, "POST", path, content=raw, headers={"Content-Type": "application/json"})


def wrong_values(schema: dict[str, Any]) -> list[Any]:
    """Values of the wrong type for a property: whatever it declares, one of these is refused."""
    return [
        [[{"$": None}]],
        {"$": [1]},
        "not-a-number" if schema.get("type") != "string" else 12345,
        -(10**30),
    ]


def test_wrong_types_on_every_endpoint_of_the_openapi_document(srv: BackgroundServer) -> None:
    doc = httpx.get(f"{srv.base_url}/openapi.json").json()
    schemas = doc["components"]["schemas"]
    checked = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            ref = (op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
            if not ref:
                continue
            schema = schemas[ref["$ref"].rsplit("/", 1)[-1]]
            for name, prop in schema.get("properties", {}).items():
                for value in wrong_values(prop):
                    # No model named: a body that validates still stops before any runner.
                    body = {name: value} if name != "model" else {"model": value, "messages": "x"}
                    call(srv, method.upper(), path, json=body)
                    checked += 1
    assert checked > 100


def test_show_names_blobs_by_digest_and_its_modelfile_recreates_the_model(srv: BackgroundServer) -> None:
    shown = httpx.post(f"{srv.base_url}/api/show", json={"model": MODEL}, timeout=30).json()
    for secret in (str(srv.config.home), str(srv.config.models), str(Path.home()) + "/"):
        assert secret not in json.dumps(shown), secret
    assert "\nFROM sha256:" in shown["modelfile"]
    resp = httpx.post(
        f"{srv.base_url}/api/create",
        json={"model": "again:latest", "modelfile": shown["modelfile"], "stream": False},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    again = httpx.post(f"{srv.base_url}/api/show", json={"model": "again:latest"}, timeout=30).json()
    assert again["details"] == shown["details"] and again["parameters"] == shown["parameters"]
