"""How every command talks to a running server: its API key, one ``--api-key`` option, one error line.

The key comes from ``ENGINEHOUSE_API_KEY`` (``Config.api_key``) or ``--api-key``, which wins, and goes out as
``Authorization: Bearer`` on every request, so the CLI works against a protected server like any client.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click
import httpx

from enginehouse.config import Config
from enginehouse.errors import EnginehouseError

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


def server_error(resp: httpx.Response, base_url: str) -> EnginehouseError:
    """A server's error answer as one line: its own message, or what to do about a refused key."""
    if resp.status_code == 401:
        return EnginehouseError(
            f"the server at {base_url} refused the API key (missing or wrong): "
            "set ENGINEHOUSE_API_KEY or pass --api-key"
        )
    resp.read()
    try:
        data = resp.json()
        message = data.get("error", resp.text) if isinstance(data, dict) else resp.text
        if isinstance(message, dict):  # the OpenAI door's shape
            message = message.get("message", message)
    except ValueError:
        message = resp.text
    return EnginehouseError(str(message)[:500] or f"the server answered {resp.status_code}")


def check(resp: httpx.Response, base_url: str) -> httpx.Response:
    """Raise the server's error as one line when it answered one; the response otherwise."""
    if resp.status_code >= 400:
        raise server_error(resp, base_url)
    return resp


def request(config: Config, method: str, path: str, *, timeout: float | None = 10, **kwargs: Any) -> Any:
    """One request to the running server with the CLI's key; its JSON answer, or one clear error."""
    try:
        resp = httpx.request(
            method, config.base_url + path, headers=client_headers(config), timeout=timeout, **kwargs
        )
    except httpx.HTTPError as exc:
        raise EnginehouseError(f"no server at {config.base_url}: {exc}") from None
    return check(resp, config.base_url).json()
