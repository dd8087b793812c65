"""The browser guard against a real gateway: DNS rebinding (Host names on a loopback bind), cross-site
requests (the Origin allowlist, preflights, JSON-only writes from pages), each refusal a 403 in its door's
shape, followed by an ordinary request that succeeds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enginehouse.server.guard import OriginPattern, allowed_host, origin_allowed, origin_patterns
from enginehouse.server.runtime import BackgroundServer
from tests.conftest import make_config
from tests.security.raw_http import assert_door_error, assert_still_serves, exchange

KEY = "guard-test-key"
CUSTOM_ORIGINS = "https://app.example.com, http://*.corp.example:*"


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path) -> Iterator[BackgroundServer]:
    """Bound to loopback with the default origins."""
    with BackgroundServer(make_config(tmp_path_factory.mktemp("eh-guard"), llama_server_bin)) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path) -> Iterator[BackgroundServer]:
    """Loopback, an API key, and origins of the user's own on top of the defaults."""
    home = tmp_path_factory.mktemp("eh-guard-keyed")
    with BackgroundServer(make_config(home, llama_server_bin, api_key=KEY, origins=CUSTOM_ORIGINS)) as srv:
        yield srv


@pytest.fixture(scope="module")
def open_bind(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path) -> Iterator[BackgroundServer]:
    """Configured for every interface (the test still connects on 127.0.0.1), every origin allowed."""
    home = tmp_path_factory.mktemp("eh-guard-open")
    with BackgroundServer(make_config(home, llama_server_bin, host="0.0.0.0:0", origins="*,null")) as srv:
        yield srv


def get(srv: BackgroundServer, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{srv.base_url}{path}", headers=headers, timeout=5)


def forbidden(srv: BackgroundServer, response: httpx.Response, path: str) -> str:
    message = assert_door_error(response.status_code, response.json(), path, 403)
    assert "access-control-allow-origin" not in response.headers
    if path.startswith("/v1"):
        assert response.json()["error"]["code"] == "forbidden"
    assert_still_serves(srv.base_url)
    return message


# ---- Host: DNS rebinding ---------------------------------------------------------------------------------

LOOPBACK_HOSTS = [
    "localhost",
    "localhost:11434",
    "LocalHost:8080",
    "app.localhost",
    "app.localhost:3000",
    "127.0.0.1",
    "127.0.0.1:11434",
    "127.1.2.3:80",
    "[::1]",
    "[::1]:11434",
]
FOREIGN_HOSTS = [
    "evil.com",
    "evil.com:11434",
    "localhost.evil.com",
    "localhost.evil.com:11434",
    "127.0.0.1.evil.com",
    "127.0.0.1.nip.io",
    "0.0.0.0:11434",
    "192.168.1.10",
    "[::ffff:127.0.0.1]",
    "[::2]:11434",
    "localhost:abc",
    "localhost.",
    "2130706433",
]


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_loopback_host_names_are_served(loopback: BackgroundServer, host: str) -> None:
    assert get(loopback, "/api/tags", Host=host).status_code == 200


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
@pytest.mark.parametrize("path", ["/api/tags", "/v1/models", "/api/version"])
def test_other_host_names_are_refused_on_a_loopback_bind(
    loopback: BackgroundServer, host: str, path: str
) -> None:
    assert "host not allowed" in forbidden(loopback, get(loopback, path, Host=host), path)


def test_a_request_without_host_is_served(loopback: BackgroundServer) -> None:
    answer = exchange(loopback.port, b"GET /api/tags HTTP/1.0\r\n\r\n")
    assert answer.status == 200 and "models" in answer.json()  # type: ignore[operator]


@pytest.mark.parametrize("host", ["evil.com", "localhost.evil.com:11434", "192.168.1.10:11434"])
def test_any_host_is_served_on_a_non_loopback_bind(open_bind: BackgroundServer, host: str) -> None:
    assert get(open_bind, "/api/tags", Host=host).status_code == 200


def test_host_names_are_parsed_not_matched() -> None:
    assert all(allowed_host(h) for h in [*LOOPBACK_HOSTS, None, ""])
    assert not any(allowed_host(h) for h in FOREIGN_HOSTS)


# ---- Origin: cross-site requests ---------------------------------------------------------------------

LOCAL_ORIGINS = ["http://localhost:3000", "https://localhost", "http://127.0.0.1:8080", "http://[::1]:5173"]
APP_ORIGINS = [
    "app://obsidian.md",
    "tauri://localhost",
    "vscode-webview://abc123",
    "chrome-extension://abcdef",
]
FOREIGN_ORIGINS = [
    "https://evil.com",
    "http://localhost.evil.com",
    "http://127.0.0.1.evil.com:8080",
    "http://0.0.0.0:11434",
    "http://192.168.1.10",
    "null",
    "https://app.example.com.evil.com",
]


def test_no_origin_is_served(loopback: BackgroundServer) -> None:
    response = get(loopback, "/api/tags")
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("origin", LOCAL_ORIGINS + APP_ORIGINS)
def test_local_pages_and_apps_are_allowed_and_named_back(loopback: BackgroundServer, origin: str) -> None:
    response = get(loopback, "/api/tags", Origin=origin)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert "Origin" in response.headers["vary"]
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/tags"), ("GET", "/v1/models"), ("POST", "/api/chat")]
)
def test_other_origins_are_refused_for_every_method(
    loopback: BackgroundServer, origin: str, method: str, path: str
) -> None:
    response = httpx.request(
        method,
        f"{loopback.base_url}{path}",
        headers={"Origin": origin},
        json={} if method == "POST" else None,
    )
    assert "origin not allowed" in forbidden(loopback, response, path)


def test_the_users_origins_are_added_to_the_defaults(keyed: BackgroundServer) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    for origin in ["https://app.example.com", "http://build.corp.example:8080", "http://localhost:3000"]:
        response = get(keyed, "/api/tags", Origin=origin, **auth)
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == origin
    for origin in ["http://app.example.com", "https://app.example.com:444", "http://corp.example.evil:80"]:
        forbidden(keyed, get(keyed, "/v1/models", Origin=origin, **auth), "/v1/models")


def test_null_is_never_allowed_and_star_is_never_answered(open_bind: BackgroundServer) -> None:
    response = get(open_bind, "/api/tags", Origin="https://anything.example")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://anything.example"
    forbidden(open_bind, get(open_bind, "/api/tags", Origin="null"), "/api/tags")


def test_origin_patterns() -> None:
    patterns = origin_patterns(CUSTOM_ORIGINS)
    assert origin_allowed("http://x.corp.example:1", patterns)
    assert not origin_allowed("http://corp.example:1", patterns)  # *.corp.example needs a subdomain
    assert OriginPattern.parse("'https://quoted.example'") == OriginPattern("https", "quoted.example", "")
    assert OriginPattern.parse("not an origin") is None
    assert not origin_allowed("null", origin_patterns("*,null"))


# ---- Preflight ----------------------------------------------------------------------------------------


def preflight(srv: BackgroundServer, path: str, origin: str, **extra: str) -> httpx.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST", **extra}
    return httpx.options(f"{srv.base_url}{path}", headers=headers)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_preflight_from_an_allowed_origin_is_answered_before_the_key_check(
    keyed: BackgroundServer, path: str
) -> None:
    asked = "authorization, content-type, x-stainless-os, x-api-key"
    response = preflight(keyed, path, "https://app.example.com", **{"Access-Control-Request-Headers": asked})
    assert response.status_code == 204
    h = response.headers
    assert h["access-control-allow-origin"] == "https://app.example.com"
    assert "POST" in h["access-control-allow-methods"]
    assert {"authorization", "content-type", "x-api-key", "x-stainless-os"} <= {
        x.strip() for x in h["access-control-allow-headers"].split(",")
    }
    assert "Origin" in h["vary"] and "access-control-allow-credentials" not in h


def test_a_preflight_asking_for_private_network_access_is_granted_to_allowed_origins(
    keyed: BackgroundServer,
) -> None:
    pna = {"Access-Control-Request-Private-Network": "true"}
    response = preflight(keyed, "/api/chat", "https://app.example.com", **pna)
    assert response.headers["access-control-allow-private-network"] == "true"
    forbidden(keyed, preflight(keyed, "/api/chat", "https://evil.com", **pna), "/api/chat")


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_preflight_from_another_origin_is_refused(keyed: BackgroundServer, path: str) -> None:
    forbidden(keyed, preflight(keyed, path, "https://evil.com"), path)


def test_an_allowed_page_without_the_key_gets_a_readable_401(keyed: BackgroundServer) -> None:
    response = get(keyed, "/v1/models", Origin="https://app.example.com")
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"


# ---- Writes from pages must be JSON -----------------------------------------------------------------

SIMPLE_BODIES = [
    ("text/plain", b'{"model": "smollm2:135m", "prompt": "hi"}'),
    ("application/x-www-form-urlencoded", b"model=smollm2"),
    (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--x--\r\n',
    ),
    (None, b""),
]


@pytest.mark.parametrize(("content_type", "body"), SIMPLE_BODIES)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/generate"),
        ("POST", "/v1/chat/completions"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
    ],
)
def test_a_page_cannot_write_without_json(
    loopback: BackgroundServer, content_type: str | None, body: bytes, method: str, path: str
) -> None:
    headers = {"Origin": "http://localhost:3000"}
    if content_type:
        headers["Content-Type"] = content_type
    response = httpx.request(method, f"{loopback.base_url}{path}", headers=headers, content=body)
    assert "Content-Type: application/json" in forbidden(loopback, response, path)


def test_a_page_can_write_json(loopback: BackgroundServer) -> None:
    origin = "http://localhost:3000"
    response = httpx.post(
        f"{loopback.base_url}/api/show", headers={"Origin": origin}, json={"model": "nope:1b"}
    )
    assert response.status_code == 404 and response.headers["access-control-allow-origin"] == origin


def test_an_allowed_page_can_upload_a_blob(loopback: BackgroundServer) -> None:
    data = b"blob bytes from a page"
    path = "/api/blobs/sha256:" + hashlib.sha256(data).hexdigest()
    octet = {"Content-Type": "application/octet-stream"}
    response = httpx.post(
        f"{loopback.base_url}{path}", headers={"Origin": "https://evil.com", **octet}, content=data
    )
    forbidden(loopback, response, path)
    response = httpx.post(
        f"{loopback.base_url}{path}", headers={"Origin": "app://desk", **octet}, content=data
    )
    assert response.status_code == 201
    assert httpx.head(f"{loopback.base_url}{path}").status_code == 200
