"""Bodies and HTTP-level refusals against a real gateway: compressed bodies (415, never decoded), bodies
over the limit (413), broken framing and stalled bodies (an answer and a closed connection, promptly), what
aiohttp's parser refuses (414, 431, 400) in the door's shape, and /api/blobs uploads bounded by size and
disk with nothing partial left behind. Each refusal is followed by an ordinary request that succeeds."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enginehouse.server.runtime import BackgroundServer
from tests.conftest import make_config
from tests.security.raw_http import Answer, assert_door_error, assert_still_serves, exchange, request

BODY_TIMEOUT = 1.0
MiB = 1 << 20


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path) -> Iterator[BackgroundServer]:
    home = tmp_path_factory.mktemp("eh-bodies")
    config = make_config(home, llama_server_bin, body_timeout=BODY_TIMEOUT, max_body_mib=1, max_blob_mib=1)
    with BackgroundServer(config) as srv:
        yield srv


@pytest.fixture(scope="module")
def unbounded(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path) -> Iterator[BackgroundServer]:
    home = tmp_path_factory.mktemp("eh-blobs")
    with BackgroundServer(make_config(home, llama_server_bin, max_blob_mib=0)) as srv:
        yield srv


def refused(srv: BackgroundServer, answer: Answer, path: str, status: int) -> str:
    message = assert_door_error(answer.status, answer.json(), path, status)
    assert_still_serves(srv.base_url)
    return message


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def gzip_bomb(decoded_mib: int) -> bytes:
    """``decoded_mib`` MiB of zeros, gzip-compressed (about a thousandth of that)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    return b"".join(packer.compress(zeros) for _ in range(decoded_mib)) + packer.flush()


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_compressed_body_is_refused_without_being_decoded(bounded: BackgroundServer, path: str) -> None:
    bomb = gzip_bomb(512)
    assert len(bomb) < MiB  # under the body limit: only decoding it would make it large
    before = rss()
    answer = exchange(
        bounded.port,
        request("POST", path, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, bomb),
    )
    assert "Content-Encoding" in refused(bounded, answer, path, 415)
    assert rss() - before < 32 * MiB


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(bounded: BackgroundServer) -> None:
    head = request("POST", "/api/chat", {"Content-Type": "application/json", "Content-Length": str(8 * MiB)})
    answer = exchange(bounded.port, head)
    assert "1 MiB" in refused(bounded, answer, "/api/chat", 413)
    assert answer.elapsed < 1.0


def test_a_chunked_body_over_the_limit_is_refused(bounded: BackgroundServer) -> None:
    head = request(
        "POST", "/v1/chat/completions", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    )
    chunk = b"%x\r\n%s\r\n" % (MiB, b" " * MiB)
    answer = exchange(bounded.port, head, chunk, chunk, b"0\r\n\r\n")
    refused(bounded, answer, "/v1/chat/completions", 413)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_broken_chunk_ends_the_request_and_the_connection_at_once(
    bounded: BackgroundServer, path: str
) -> None:
    head = request("POST", path, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    answer = exchange(bounded.port, head, b"2\r\n{}\r\n", b"zz\r\nbroken\r\n", pause=0.2)
    assert "malformed" in refused(bounded, answer, path, 400)
    assert answer.closed and answer.elapsed < 2.0


def test_a_broken_chunk_in_the_first_packet_is_answered_in_the_door_shape(bounded: BackgroundServer) -> None:
    head = request("POST", "/api/chat", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    answer = exchange(bounded.port, head + b"zz\r\n{}\r\n0\r\n\r\n")
    assert "chunk" in refused(bounded, answer, "/api/chat", 400)
    assert answer.closed


@pytest.mark.parametrize("path", ["/api/generate", "/v1/completions"])
def test_a_body_that_stops_arriving_times_out_and_closes(bounded: BackgroundServer, path: str) -> None:
    head = request("POST", path, {"Content-Type": "application/json", "Content-Length": "100"})
    answer = exchange(bounded.port, head + b'{"model"')
    refused(bounded, answer, path, 408)
    assert answer.closed
    assert BODY_TIMEOUT - 0.1 < answer.elapsed < BODY_TIMEOUT + 2.0


def test_a_trickled_body_cannot_hold_the_connection(bounded: BackgroundServer) -> None:
    """A slow-loris body that keeps sending a byte now and then still has one deadline for all of it."""
    head = request("POST", "/api/chat", {"Content-Type": "application/json", "Content-Length": "50"})
    answer = exchange(bounded.port, head, *[b" "] * 40, pause=0.1)
    refused(bounded, answer, "/api/chat", 408)
    assert answer.closed and answer.elapsed < BODY_TIMEOUT + 2.0


@pytest.mark.parametrize(
    ("raw", "path", "status"),
    [
        (request("GET", "/v1/models?" + "a" * 9000), "/v1/models", 414),
        (request("GET", "/api/tags?" + "a" * 9000), "/api/tags", 414),
        (request("GET", "/v1/models", {"X-Big": "a" * 9000}), "/v1/models", 431),
        (request("GET", "/api/tags", {f"X-H{i}": "a" for i in range(200)}), "/api/tags", 431),
        (b"GET\x01 / HTTP/1.1\r\nHost: localhost\r\n\r\n", "/", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), "/", 400),  # TLS to a plain port
    ],
    ids=["long-url-openai", "long-url-ollama", "long-header", "many-headers", "bad-line", "tls"],
)
def test_what_the_parser_refuses_is_answered_in_the_door_shape(
    bounded: BackgroundServer, raw: bytes, path: str, status: int
) -> None:
    answer = exchange(bounded.port, raw)
    assert answer.headers["content-type"].startswith("application/json")
    message = refused(bounded, answer, path, status)
    assert "aaaa" not in message  # the offending bytes are not echoed
    assert answer.closed


def blob(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def leftovers(srv: BackgroundServer) -> list[str]:
    tmp = srv.config.models / "tmp"
    return sorted(os.listdir(tmp)) if tmp.exists() else []


def settled(srv: BackgroundServer, timeout: float = 3.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (found := leftovers(srv)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_a_blob_within_the_limit_is_stored(bounded: BackgroundServer) -> None:
    data = os.urandom(MiB // 2)
    response = httpx.post(f"{bounded.base_url}/api/blobs/{blob(data)}", content=data)
    assert response.status_code == 201
    assert httpx.head(f"{bounded.base_url}/api/blobs/{blob(data)}").status_code == 200
    assert settled(bounded) == []


def test_a_blob_declared_over_the_limit_is_refused_up_front(bounded: BackgroundServer) -> None:
    path = f"/api/blobs/{blob(b'x')}"
    answer = exchange(bounded.port, request("POST", path, {"Content-Length": str(2 * MiB)}))
    assert "ENGINEHOUSE_MAX_BLOB_MIB" in refused(bounded, answer, path, 413)
    assert answer.elapsed < 1.0 and settled(bounded) == []


def test_a_chunked_blob_over_the_limit_is_refused_and_removed(bounded: BackgroundServer) -> None:
    data = os.urandom(2 * MiB)
    path = f"/api/blobs/{blob(data)}"

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 64 * 1024):
            yield data[i : i + 64 * 1024]

    response = httpx.post(f"{bounded.base_url}{path}", content=chunks())
    assert_door_error(response.status_code, response.json(), path, 413)
    assert settled(bounded) == []
    assert httpx.head(f"{bounded.base_url}{path}").status_code == 404
    assert_still_serves(bounded.base_url)


def test_a_blob_larger_than_the_free_disk_is_refused(unbounded: BackgroundServer) -> None:
    path = f"/api/blobs/{blob(b'x')}"
    answer = exchange(unbounded.port, request("POST", path, {"Content-Length": str(1 << 60)}))
    message = refused(unbounded, answer, path, 507)
    assert "disk space" in message and str(unbounded.config.home) not in message
    assert settled(unbounded) == []


def test_an_abandoned_blob_upload_leaves_nothing(unbounded: BackgroundServer) -> None:
    data = os.urandom(MiB)
    path = f"/api/blobs/{blob(data)}"
    with socket.create_connection(("127.0.0.1", unbounded.port)) as sock:
        sock.sendall(request("POST", path, {"Content-Length": str(len(data))}) + data[: MiB // 4])
        time.sleep(0.3)  # the partial file exists now
    assert settled(unbounded) == []
    assert httpx.head(f"{unbounded.base_url}{path}").status_code == 404
    assert_still_serves(unbounded.base_url)


def test_a_stalled_blob_upload_times_out_and_leaves_nothing(bounded: BackgroundServer) -> None:
    data = os.urandom(MiB // 2)
    path = f"/api/blobs/{blob(data)}"
    answer = exchange(bounded.port, request("POST", path, {"Content-Length": str(len(data))}) + data[:1000])
    assert "stalled" in refused(bounded, answer, path, 408)
    assert answer.closed and settled(bounded) == []


def test_a_blob_with_the_wrong_digest_leaves_nothing(bounded: BackgroundServer) -> None:
    path = f"/api/blobs/{blob(b'something else')}"
    response = httpx.post(f"{bounded.base_url}{path}", content=b"these bytes")
    assert_door_error(response.status_code, response.json(), path, 400)
    assert settled(bounded) == []
