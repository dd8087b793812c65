"""How every command talks to a running server: its API key, one ``--api-key`` option, one error line.

The key comes from ``ENGINEHOUSE_API_KEY`` (``Config.api_key``) or ``--api-key``, which wins, and goes out as
``Authorization: Bearer`` on every request, so the CLI works against a protected server like any client.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson

from enginehouse import http_client
from enginehouse.config import Config
from enginehouse.errors import EnginehouseError
from enginehouse.http_client import HttpError, Reply

F = TypeVar("F", bound=Callable[..., Any])


def client_headers(config: Config) -> dict[str, str]:
    """The headers every request from the CLI to the server carries."""
    return {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}


def api_key_option(command: F) -> F:
    """Add ``--api-key`` to a command that takes the Config first (under ``@click.pass_obj``)."""

    @click.option(
        "--api-key",
        metavar="KEY",
        help="API key of the server (default ENGINEHOUSE_API_KEY), sent as 'Authorization: Bearer'.",
    )
    @functools.wraps(command)
    def wrapper(config: Config, *args: Any, api_key: str | None = None, **kwargs: Any) -> Any:
        if api_key:
            config = config.with_(api_key=api_key)
        return command(config, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def server_error(status: int, body: bytes, base_url: str) -> EnginehouseError:
    """A server's error answer as one line: its own message, or what to do about a refused key."""
    if status == 401:
        return EnginehouseError(
            f"the server at {base_url} refused the API key (missing or wrong): "
            "set ENGINEHOUSE_API_KEY or pass --api-key"
        )
    text = body.decode("utf-8", errors="replace")
    try:
        data = orjson.loads(body)
        message = data.get("error", text) if isinstance(data, dict) else text
        if isinstance(message, dict):  # the OpenAI door's shape
            message = message.get("message", message)
    except ValueError:
        message = text
    return EnginehouseError(str(message)[:500] or f"the server answered {status}")


def check(reply: Reply, base_url: str) -> Reply:
    """Raise the server's error as one line when it answered one; the reply otherwise."""
    if reply.status >= 400:
        raise server_error(reply.status, reply.body, base_url)
    return reply


def request(config: Config, method: str, path: str, *, timeout: float | None = 10, **kwargs: Any) -> Any:
    """One request to the running server with the CLI's key; its JSON answer, or one clear error."""
    try:
        reply = http_client.request(
            method, config.base_url + path, headers=client_headers(config), timeout=timeout, **kwargs
        )
    except HttpError as exc:
        raise EnginehouseError(f"no server at {config.base_url}: {exc}") from None
    return check(reply, config.base_url).json()
