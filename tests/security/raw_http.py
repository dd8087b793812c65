"""Raw HTTP over a socket, for the bytes httpx will not send (broken framing, stalled bodies, huge lines),
and the checks every refusal test makes: its status, its door's shape, and a server still serving."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import httpx
import orjson


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after answering
    elapsed: float  # seconds from the first byte sent to the end of the answer

    def json(self) -> object:
        return orjson.loads(self.body)


def exchange(port: int, *parts: bytes, pause: float = 0.0, wait: float = 10.0) -> Answer:
    """Send ``parts`` (``pause`` seconds apart, stopping if the server answers), read one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        start = time.monotonic()
        data = b""
        for index, part in enumerate(parts):
            try:
                sock.sendall(part)
            except OSError:
                break  # the server answered and closed while we were still sending
            if pause and index < len(parts) - 1:
                sock.settimeout(pause)
                try:
                    if chunk := sock.recv(65536):
                        data += chunk
                        break
                except TimeoutError:
                    pass
                sock.settimeout(wait)
        return _read_answer(sock, data, start, wait)


def _read_answer(sock: socket.socket, data: bytes, start: float, wait: float) -> Answer:
    sock.settimeout(wait)
    closed = False
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            headers = _headers(head)
            length = int(headers.get("content-length", "-1"))
            if 0 <= length <= len(rest):
                break
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            closed = True
            break
        data += chunk
    elapsed = time.monotonic() - start
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        raise AssertionError(f"no answer within {wait} s")
    status = int(head.split(b" ", 2)[1])
    headers = _headers(head)
    if not closed:
        closed = _closed_soon(sock)
    return Answer(status, headers, body[: int(headers.get("content-length", len(body)))], closed, elapsed)


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _closed_soon(sock: socket.socket, within: float = 1.0) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """An HTTP/1.1 request as bytes; Host defaults to localhost."""
    all_headers = {"Host": "localhost", **(headers or {})}
    if body and "Transfer-Encoding" not in all_headers:
        all_headers.setdefault("Content-Length", str(len(body)))
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in all_headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_door_error(status: int, body: object, path: str, expected: int) -> str:
    """The refusal's status and its door's shape (OpenAI's under /v1, else Ollama's), with nothing that
    belongs to the server (a path, a traceback, an exception class). Returns the message."""
    assert status == expected, (status, body)
    assert isinstance(body, dict)
    if path.startswith("/v1"):
        error = body["error"]
        assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, body
        assert error["type"] == "invalid_request_error" or status >= 500, body
        message = error["message"]
    else:
        assert set(body) == {"error"}, body
        message = body["error"]
    assert isinstance(message, str) and message
    for leak in ("Traceback", "/tmp/", "/root", "/home/", "site-packages", "Error:", "Exception"):
        assert leak not in message, message
    return message


def assert_still_serves(base_url: str) -> None:
    """An ordinary request right after a refusal is answered within a second."""
    response = httpx.get(f"{base_url}/api/version", timeout=1.0)
    assert response.status_code == 200 and response.json()["version"]
