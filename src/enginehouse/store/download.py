"""Resumable, parallel-range, verified blob downloads into the store (generic: any HTTP source).

One blob is fetched as byte ranges over several connections, written with ``os.pwrite`` into a
sized file under ``<store>/partial/`` and hashed by a thread that follows the contiguous prefix of
what has arrived, so hashing overlaps the transfer even when parts land out of order. Only a blob
whose sha256 matches enters ``blobs/`` (fsynced, then renamed by the store); a mismatch deletes the
partial data.

Resume: ``partial/sha256-<hex>.partial`` holds the bytes and ``partial/sha256-<hex>.json`` records
how far each range got. The record is replaced atomically about once a second and claims only bytes
already written, so a process killed at any moment (kill -9 included) leaves a record that is true
(the page cache outlives the process); the next attempt fetches only the rest. A record carries the
boot id and is not trusted after a reboot (a crash may have lost unflushed data); where there is no
boot id, the data is fdatasynced before each record instead. Either way the final sha256 check
stands between a partial file and the store.
Concurrent downloads of one blob (two pulls, two processes) are serialised with a lock file.

Transport: :class:`HttpSession` follows redirects itself and asks an :class:`BearerAuth` for the
``Authorization`` header of every hop, so a token goes only to the origin it was issued for (a
registry's 307 to a CDN loses it). Small control requests (manifests, tokens) go through httpx;
blob bodies go through aiohttp by default: on loopback it moves bytes about twice as fast as
httpx (C parser, fewer copies), which matters at hundreds of MB/s; ``backend="httpx"`` sends the
bodies through httpx as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
import httpx
import yarl

from enginehouse import __version__
from enginehouse.errors import EnginehouseError, InvalidDigest, StoreError, UpstreamUnavailable
from enginehouse.store.fsio import atomic_write_bytes, make_dirs
from enginehouse.store.names import digest_filename, parse_digest
from enginehouse.store.store import Store

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process lock, the rest still works
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "BearerAuth",
    "HttpSession",
    "ProgressFn",
    "check_free_space",
    "download_blob",
    "partial_dir",
    "pending_bytes",
]

USER_AGENT = f"enginehouse/{__version__}"
# Tunables (module attributes so tests and benchmarks can shrink them).
RETRIES = 5  # consecutive failed attempts of one range (no byte arrived) before giving up
BACKOFF_BASE = 0.5  # seconds; doubles per consecutive failure
BACKOFF_MAX = 10.0
CHECKPOINT_INTERVAL = 0.25  # seconds between resume records (cheap: no flush, see boot_id)
CHECKPOINT_INTERVAL_FLUSHED = 2.0  # ... where each record costs an fdatasync of the data
PROGRESS_INTERVAL = 0.1  # seconds between progress reports of one blob (the last one always comes)
SPACE_MARGIN = 16 << 20  # bytes kept free beyond what a download needs
MAX_REDIRECTS = 10
CONNECTIONS_PER_BLOB = 4
CONNECT_TIMEOUT = 30.0
HASH_BUF = 4 << 20
STATE_VERSION = 1
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

ProgressFn = Callable[[int, int], Awaitable[None] | None]  # (completed, total)
Backend = Literal["aiohttp", "httpx"]


class TransientError(Exception):
    """A network failure worth retrying (connection dropped, stalled, 5xx)."""


class _RangesUnsupported(Exception):
    """The server answered a range request with the whole file."""


# -- URLs and auth --------------------------------------------------------------------------------


def origin(url: str) -> str:
    """``scheme://host:port`` (default port spelled out): the unit a token is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def _shown(url: str) -> str:
    """A URL without its query string (signed CDN URLs carry credentials there)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}{p.path}"


_CHALLENGE_RE = re.compile(r'([A-Za-z_]+)\s*=\s*"([^"]*)"')


class BearerAuth:
    """Bearer tokens, each bound to one origin: static ones given up front (e.g. a Hugging Face
    token for ``https://huggingface.co``) and ones fetched from a registry's token realm after a
    ``401`` with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``."""

    def __init__(self, static: Mapping[str, str] | None = None) -> None:
        self._tokens: dict[str, str] = {origin(o): t for o, t in (static or {}).items()}
        self.realm_requests = 0

    def headers_for(self, url: str) -> dict[str, str]:
        token = self._tokens.get(origin(url))
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def challenge(self, http: HttpSession, url: str, header: str) -> bool:
        """Fetch a token for ``url``'s origin as ``header`` asks; False when it is no Bearer challenge."""
        scheme, _, rest = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        params = {k.lower(): v for k, v in _CHALLENGE_RE.findall(rest)}
        realm = params.get("realm")
        if not realm:
            return False
        http.check_url(realm)
        query = {k: params[k] for k in ("service", "scope") if k in params}
        self.realm_requests += 1
        status, _, body = await http.get_small(realm, params=query, limit=1 << 20, auth=False)
        if status != 200:
            raise UpstreamUnavailable(
                f"the registry's token service {_shown(realm)} answered HTTP {status}: {error_text(body)}"
            )
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise UpstreamUnavailable(f"the registry's token service {_shown(realm)} sent no token")
        self._tokens[origin(url)] = token
        return True


def error_text(body: bytes, limit: int = 300) -> str:
    """A registry error body in plain words: ``message (CODE)`` items of ``{"errors": [...]}``, or text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    items: list[str] = []
    if isinstance(data, dict):
        errs = data.get("errors")
        if isinstance(errs, list):
            for e in errs:
                if isinstance(e, dict):
                    msg, code = e.get("message"), e.get("code")
                    text = str(msg) if msg else str(code or "")
                    if msg and code:
                        text += f" ({code})"
                    if text:
                        items.append(text)
        elif isinstance(data.get("error"), str):
            items.append(data["error"])
    text = "; ".join(items) if items else body.decode("utf-8", errors="replace").strip()
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return (text[:limit] + "...") if len(text) > limit else (text or "(empty body)")


# -- HTTP -----------------------------------------------------------------------------------------


def _ssl_context() -> ssl.SSLContext:
    try:
        import certifi  # httpx's own CA bundle, so both clients trust the same roots

        return ssl.create_default_context(cafile=certifi.where())
    except (ImportError, OSError):  # pragma: no cover
        return ssl.create_default_context()


def _is_tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLError | ssl.CertificateError | aiohttp.ClientSSLError):
            return True
        e = e.__cause__ or e.__context__
    return False


_NET_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TransportError,
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)


class Response:
    """A response with its body not yet read (one shape for both client libraries)."""

    status: int
    headers: Mapping[str, str]
    url: str

    def chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the body (the caller decides whether more was too many)."""
        out = bytearray()
        async for chunk in self.chunks():
            out += chunk
            if len(out) >= limit:
                break
        return bytes(out[:limit])


class _HttpxResponse(Response):
    def __init__(self, r: httpx.Response, url: str) -> None:
        self._r, self.status, self.headers, self.url = r, r.status_code, r.headers, url

    def chunks(self) -> AsyncIterator[bytes]:
        return self._r.aiter_raw()

    async def aclose(self) -> None:
        await self._r.aclose()


class _AiohttpResponse(Response):
    def __init__(self, r: aiohttp.ClientResponse, url: str) -> None:
        self._r, self.status, self.headers, self.url = r, r.status, r.headers, url

    async def chunks(self) -> AsyncIterator[bytes]:
        # readchunk hands over buffered chunks one by one; readany would join them (a copy).
        read = self._r.content.readchunk
        while True:
            chunk, end_of_http_chunk = await read()
            if chunk:
                yield chunk
            elif not end_of_http_chunk:
                return

    async def aclose(self) -> None:
        if self._r.content.at_eof():
            self._r.release()  # body complete: the connection goes back to the pool
        else:
            self._r.close()


class HttpSession:
    """Requests that follow redirects by hand, bind tokens to origins and refuse plain http except
    to ``allow_http_hosts`` (host names, without port). Use as ``async with``.

    ``client`` (httpx, optional) carries control requests: manifests, tokens, error bodies. Blob
    bodies go through ``backend``: aiohttp (default, faster) or the same httpx client.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient | None = None,
        backend: Backend = "aiohttp",
        auth: BearerAuth | None = None,
        allow_http_hosts: frozenset[str] | set[str] = frozenset(),
        stall_timeout: float = 30.0,
    ) -> None:
        if backend not in ("aiohttp", "httpx"):
            raise ValueError(f"unknown HTTP backend {backend!r}")
        self.auth = auth or BearerAuth()
        self.backend = backend
        self.stall_timeout = stall_timeout
        self.allow_http_hosts = frozenset(h.lower() for h in allow_http_hosts)
        self._client = client
        self._own_client = client is None
        self._aio: aiohttp.ClientSession | None = None
        self._hx_timeout = httpx.Timeout(stall_timeout, connect=CONNECT_TIMEOUT, pool=None)
        self._aio_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=stall_timeout
        )

    async def __aenter__(self) -> HttpSession:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, timeout=self._hx_timeout)
        if self.backend == "aiohttp":
            self._aio = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, ssl=_ssl_context()),
                auto_decompress=False,
                trust_env=True,
                cookie_jar=aiohttp.DummyCookieJar(),
                read_bufsize=1 << 20,
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._aio is not None:
            await self._aio.close()
            self._aio = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("HttpSession used outside 'async with'")
        return self._client

    def check_url(self, url: str) -> None:
        p = urlsplit(url)
        scheme = p.scheme.lower()
        if scheme == "https":
            return
        if scheme == "http" and (p.hostname or "").lower() in self.allow_http_hosts:
            return
        if scheme == "http":
            raise UpstreamUnavailable(
                f"refusing plain-http URL {_shown(url)}: only hosts pulled with insecure=True may use http"
            )
        raise UpstreamUnavailable(f"refusing URL {_shown(url)}: not http(s)")

    async def _send(self, url: str, headers: dict[str, str], body: bool, params: Any = None) -> Response:
        try:
            if body and self._aio is not None:
                target = yarl.URL(url, encoded=True)
                if params:
                    target = target.update_query(params)
                r = await self._aio.get(
                    target, headers=headers, allow_redirects=False, timeout=self._aio_timeout
                )
                return _AiohttpResponse(r, url)
            req = self.client.build_request(
                "GET", url, headers=headers, params=params, timeout=self._hx_timeout
            )
            hr = await self.client.send(req, stream=True, follow_redirects=False)
            return _HttpxResponse(hr, url)
        except _NET_ERRORS as e:
            raise self._net_error(url, e) from e

    def _net_error(self, url: str, e: BaseException) -> Exception:
        detail = str(e) or type(e).__name__
        if _is_tls_failure(e):
            hint = ""
            if urlsplit(url).scheme == "https":
                hint = " (if it serves plain http, pull it with insecure=True)"
            return UpstreamUnavailable(f"TLS failure talking to {_shown(url)}: {detail}{hint}")
        if isinstance(e, TimeoutError | httpx.TimeoutException):
            return TransientError(f"no data from {_shown(url)} for {self.stall_timeout:g}s ({detail})")
        return TransientError(f"connection to {_shown(url)} failed: {detail}")

    async def open(
        self, url: str, headers: Mapping[str, str] | None = None, *, body: bool = False, params: Any = None
    ) -> Response:
        """GET ``url``: redirects followed (the token re-chosen per hop), one Bearer challenge
        answered. Returns the final response unread; the caller must ``aclose`` it. Network
        failures raise :class:`TransientError` (retry) or :class:`UpstreamUnavailable`."""
        base = {"User-Agent": USER_AGENT, **(headers or {})}
        challenged = 0
        for _ in range(MAX_REDIRECTS + 3):
            self.check_url(url)
            resp = await self._send(url, {**base, **self.auth.headers_for(url)}, body, params)
            if resp.status in _REDIRECTS:
                location = resp.headers.get("location")
                await resp.aclose()
                if not location:
                    raise UpstreamUnavailable(f"{_shown(url)} redirected without a Location")
                url, params = urljoin(url, location), None
                continue
            if resp.status == 401 and challenged < 2:
                header = resp.headers.get("www-authenticate", "")
                if header.lower().startswith("bearer"):
                    await resp.aclose()
                    if await self.auth.challenge(self, url, header):
                        challenged += 1
                        continue
                    resp = await self._send(url, {**base, **self.auth.headers_for(url)}, body, params)
            return resp
        raise UpstreamUnavailable(f"too many redirects fetching {_shown(url)}")

    async def get_small(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        limit: int,
        auth: bool = True,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """A whole small response through the control client: (status, headers, at most limit+1 bytes)."""
        if not auth:  # a token service: one plain request, no tokens, no redirects
            self.check_url(url)
            resp = await self._send(url, {"User-Agent": USER_AGENT, **(headers or {})}, False, params)
        else:
            resp = await self.open(url, headers, params=params)
        try:
            data = await resp.read(limit + 1)
        except _NET_ERRORS as e:
            raise self._net_error(url, e) from e
        finally:
            await resp.aclose()
        return resp.status, resp.headers, data


# -- the partial file and its record --------------------------------------------------------------


def partial_dir(store: Store) -> Path:
    return store.root / "partial"


@dataclass
class _Part:
    start: int
    end: int  # exclusive
    done: int = 0  # bytes written from start (only ever grows while a job runs)

    @property
    def length(self) -> int:
        return self.end - self.start


def _layout(size: int, part_size: int) -> list[_Part]:
    if size <= 0:
        return []
    n = max(1, math.ceil(size / max(1, part_size)))
    bounds = [size * i // n for i in range(n + 1)]
    return [_Part(bounds[i], bounds[i + 1]) for i in range(n)]


def _paths(store: Store, digest: str) -> tuple[Path, Path, Path]:
    base = partial_dir(store) / digest_filename(digest)
    return base.with_suffix(".partial"), base.with_suffix(".json"), base.with_suffix(".lock")


def _load_state(data_path: Path, state_path: Path, digest: str, size: int) -> list[_Part] | None:
    """The recorded ranges when record and partial file agree with each other and with the blob."""
    try:
        state = json.loads(state_path.read_bytes())
        if data_path.stat().st_size != size:
            return None
    except (OSError, ValueError):
        return None
    if not (
        isinstance(state, dict)
        and state.get("boot_id") in (None, boot_id())  # a record from before a crash claims too much
        and state.get("version") == STATE_VERSION
        and state.get("digest") == digest
        and state.get("size") == size
        and isinstance(state.get("parts"), list)
    ):
        return None
    parts: list[_Part] = []
    pos = 0
    for item in state["parts"]:
        if not (isinstance(item, list) and len(item) == 3 and all(type(x) is int for x in item)):
            return None
        start, end, done = item
        if start != pos or end <= start or not 0 <= done <= end - start:
            return None
        parts.append(_Part(start, end, done))
        pos = end
    if pos != size:
        return None
    return parts


_BOOT_ID: list[str | None] = []


def boot_id() -> str | None:
    """This boot's id (Linux), or None where the system has none to offer."""
    if not _BOOT_ID:
        try:
            _BOOT_ID.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None)
        except OSError:
            _BOOT_ID.append(None)
    return _BOOT_ID[0]


def _replace_atomically(path: Path, data: bytes) -> None:
    """Write beside ``path`` and rename over it: readers see the old or the new file, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def pending_bytes(store: Store, digest: str, size: int) -> int:
    """Bytes still to fetch for a blob: 0 when stored, less than ``size`` when a partial download exists."""
    d = parse_digest(digest)
    if store.has_blob(d):
        return 0
    data_path, state_path, _ = _paths(store, d)
    parts = _load_state(data_path, state_path, d, size)
    return size - sum(p.done for p in parts) if parts is not None else size


def check_free_space(store: Store, needed: int) -> None:
    """StoreError unless the store's file system has ``needed`` bytes (plus a margin) free."""
    if needed <= 0:
        return
    probe = store.root
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + SPACE_MARGIN:
        raise StoreError(
            f"not enough disk space in {store.root}: the download needs {_size(needed)}"
            f" (+{_size(SPACE_MARGIN)} margin) but only {_size(free)} is free"
        )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


@contextlib.asynccontextmanager
async def _blob_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive flock on ``path`` (polled, so the event loop keeps running while waiting)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            await asyncio.sleep(0.1)
            continue
        try:  # the holder before us may have removed the file: then lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


# -- hashing --------------------------------------------------------------------------------------


class _Hasher:
    """sha256 of the partial file, computed in a thread that follows the contiguous prefix of
    completed bytes (part i's bytes count once every part before it is complete up to there)."""

    def __init__(self, fd: int, parts: list[_Part], size: int) -> None:
        self._fd, self._parts, self._size = fd, parts, size
        self._wake = threading.Event()
        self._stop = False
        self.hexdigest: str | None = None
        self.error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="blob-hash", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        try:
            h = hashlib.sha256()
            buf = bytearray(HASH_BUF)
            view = memoryview(buf)
            pos, i, parts = 0, 0, self._parts
            while pos < self._size:
                if self._stop:
                    return
                while pos >= parts[i].end:
                    i += 1
                self._wake.clear()
                avail = parts[i].start + parts[i].done
                if pos >= avail:
                    self._wake.wait(0.05)
                    continue
                n = os.preadv(self._fd, [view[: min(HASH_BUF, avail - pos)]], pos)
                if n <= 0:
                    raise StoreError("the partial download shrank while it was being hashed")
                h.update(view[:n])
                pos += n
            self.hexdigest = h.hexdigest()
        except BaseException as e:
            self.error = e
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may be gone at interpreter exit
                self._loop.call_soon_threadsafe(lambda: self._done.done() or self._done.set_result(None))

    async def result(self) -> str:
        self.poke()
        await asyncio.shield(self._done)
        if self.error is not None:
            raise self.error
        assert self.hexdigest is not None
        return self.hexdigest

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()


# -- one blob -------------------------------------------------------------------------------------


class _BlobJob:
    def __init__(
        self,
        store: Store,
        digest: str,
        size: int,
        url: str,
        http: HttpSession,
        progress: ProgressFn | None,
        part_size: int,
        connections: int,
    ) -> None:
        self.store, self.digest, self.size, self.url, self.http = store, digest, size, url, http
        self.progress, self.part_size, self.connections = progress, part_size, max(1, connections)
        self.data_path, self.state_path, _ = _paths(store, digest)
        self.parts: list[_Part] = []
        self.fd = -1
        self.hasher: _Hasher | None = None
        self.last_emit = 0.0
        self._io_lock = threading.Lock()  # record writes vs. closing the file
        self._closed = False

    # progress

    def completed(self) -> int:
        return sum(p.done for p in self.parts)

    async def emit(self) -> None:
        if self.progress is None:
            return
        self.last_emit = time.monotonic()
        r = self.progress(self.completed(), self.size)
        if inspect.isawaitable(r):
            await r

    # the resume record

    def _snapshot(self) -> list[list[int]]:
        return [[p.start, p.end, p.done] for p in self.parts]

    def _write_state_unlocked(self, snap: list[list[int]]) -> None:
        record = {"version": STATE_VERSION, "digest": self.digest, "size": self.size, "parts": snap}
        boot = boot_id()
        if boot is not None:
            # Trusted in this boot only: the page cache outlives the process, so no flush is needed.
            record["boot_id"] = boot
            _replace_atomically(self.state_path, json.dumps(record).encode())
        else:
            (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(self.fd)  # data before the claim
            atomic_write_bytes(self.state_path, json.dumps(record).encode())

    def _write_state(self, snap: list[list[int]]) -> None:
        with self._io_lock:
            if not self._closed:
                self._write_state_unlocked(snap)

    async def _checkpointer(self) -> None:
        last = self._snapshot()
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL if boot_id() else CHECKPOINT_INTERVAL_FLUSHED)
            snap = self._snapshot()
            if snap != last:
                try:
                    await asyncio.to_thread(self._write_state, snap)
                except OSError as e:  # the download goes on; only resuming it would lose ground
                    log.warning("cannot record the progress of blob %s: %s", self.digest, e)
                last = snap

    # running

    def _open(self) -> None:
        make_dirs(self.data_path.parent)
        for stale in self.data_path.parent.glob(f".{self.state_path.name[:40]}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()  # a record write cut short by a kill
        parts = _load_state(self.data_path, self.state_path, self.digest, self.size)
        self.fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o644)
        if parts is None:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            os.ftruncate(self.fd, 0)
            os.ftruncate(self.fd, self.size)
            parts = _layout(self.size, self.part_size)
        self.parts = parts

    def _discard(self) -> None:
        for p in (self.state_path, self.data_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    async def run(self) -> None:
        self._open()
        ckpt: asyncio.Task[None] | None = None
        verified_bad = False
        committed = False
        try:
            await self.emit()
            self.hasher = _Hasher(self.fd, self.parts, self.size)
            ckpt = asyncio.create_task(self._checkpointer())
            try:
                await self._fetch_all()
            except _RangesUnsupported:
                # Start over as one plain stream (no range support means no resume either).
                self.hasher.stop()
                self.parts[:] = [_Part(0, self.size)] if self.size else []
                self.hasher = _Hasher(self.fd, self.parts, self.size)
                await self._fetch_all()
            await self.emit()
            got = "sha256:" + await self.hasher.result()
            if got != self.digest:
                verified_bad = True
                raise InvalidDigest(
                    f"blob {self.digest} failed verification: the downloaded data hashes to {got};"
                    " the partial download was deleted"
                )
            await asyncio.to_thread(self._fsync)
            self._commit()
            committed = True
        finally:
            if ckpt is not None:
                ckpt.cancel()
            if self.hasher is not None:
                self.hasher.stop()
            with self._io_lock:
                if not committed and not verified_bad and self.fd >= 0:
                    with contextlib.suppress(OSError):  # best effort: keep what has arrived
                        self._write_state_unlocked(self._snapshot())
                self._closed = True
                if self.fd >= 0:
                    os.close(self.fd)
                    self.fd = -1
                if verified_bad or committed:
                    self._discard()

    def _fsync(self) -> None:
        with self._io_lock:  # never while the file is being closed
            if not self._closed:
                os.fsync(self.fd)

    def _commit(self) -> None:
        try:
            # The store's own commit (rename into blobs/, fsync the directory): the data is already
            # verified and fsynced, so hashing it again through add_blob_from_file would be waste.
            self.store._commit_blob(self.data_path, self.digest)
        except OSError:  # blobs/ on another file system: copy (re-verified) instead of renaming
            self.store.add_blob_from_file(self.data_path, expected_digest=self.digest, link=False)
            with contextlib.suppress(FileNotFoundError):
                self.data_path.unlink()

    async def _fetch_all(self) -> None:
        todo = iter([p for p in self.parts if p.done < p.length])
        n = min(self.connections, sum(1 for p in self.parts if p.done < p.length))

        async def worker() -> None:
            for part in todo:
                await self._fetch_part(part)

        await run_all([worker() for _ in range(n)])

    async def _fetch_part(self, part: _Part) -> None:
        failures = 0
        while part.done < part.length:
            before = part.done
            try:
                await self._stream(part)
                if part.done < part.length:
                    raise TransientError("the response ended early")
                return
            except TransientError as e:
                error: Exception = e
            except _NET_ERRORS as e:
                error = self.http._net_error(self.url, e)
                if not isinstance(error, TransientError):
                    raise error from e
            failures = 0 if part.done > before else failures + 1
            if failures > RETRIES:
                raise UpstreamUnavailable(
                    f"downloading blob {self.digest} failed after {RETRIES} retries: {error};"
                    " what arrived is kept and the next pull resumes from there"
                ) from error
            await asyncio.sleep(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, failures - 1)))

    async def _stream(self, part: _Part) -> None:
        start, end = part.start + part.done, part.end
        whole = start == 0 and end == self.size
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={start}-{end - 1}"}
        resp = await self.http.open(self.url, headers, body=True)
        try:
            if resp.status == 200:
                if not whole:
                    raise _RangesUnsupported
            elif resp.status == 206:
                _check_content_range(resp.headers.get("content-range"), start, end, self.size, self.digest)
            elif resp.status == 429 or resp.status >= 500:
                raise TransientError(f"HTTP {resp.status} from {_shown(resp.url)}")
            else:
                text = error_text(await resp.read(64 << 10))
                raise UpstreamUnavailable(
                    f"fetching blob {self.digest} from {_shown(resp.url)} failed: HTTP {resp.status}: {text}"
                )
            encoding = resp.headers.get("content-encoding", "identity").lower()
            if encoding not in ("", "identity"):
                raise UpstreamUnavailable(
                    f"blob {self.digest} was sent {encoding}-encoded; expected raw bytes"
                )
            await self._receive(resp, part, start, end)
        finally:
            await resp.aclose()

    async def _receive(self, resp: Response, part: _Part, off: int, end: int) -> None:
        fd, hasher = self.fd, self.hasher
        assert hasher is not None
        pwrite, monotonic, poke = os.pwrite, time.monotonic, hasher.poke
        async for chunk in resp.chunks():
            n = len(chunk)
            if off + n > end:
                raise UpstreamUnavailable(f"the server sent more bytes than blob {self.digest} has")
            try:
                written = pwrite(fd, chunk, off)
                while written < n:  # rare: short writes on regular files
                    written += pwrite(fd, memoryview(chunk)[written:], off + written)
            except OSError as e:
                raise StoreError(f"cannot write {self.data_path}: {e}") from e
            off += n
            part.done = off - part.start
            poke()
            if monotonic() - self.last_emit >= PROGRESS_INTERVAL:
                await self.emit()


def _check_content_range(value: str | None, start: int, end: int, size: int, digest: str) -> None:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m or int(m.group(1)) != start or int(m.group(2)) != end - 1:
        raise UpstreamUnavailable(
            f"blob {digest}: the server answered range {start}-{end - 1} with Content-Range {value!r}"
        )
    if m.group(3) != "*" and int(m.group(3)) != size:
        raise InvalidDigest(
            f"blob {digest}: the server holds {m.group(3)} bytes but the manifest says {size}"
        )


async def run_all(coros: list[Awaitable[Any]]) -> list[Any]:
    """Run concurrently; on the first failure cancel the rest, wait for them, re-raise that failure."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def download_blob(
    store: Store,
    digest: str,
    size: int,
    url: str,
    http: HttpSession,
    *,
    progress: ProgressFn | None = None,
    part_size: int = 64 << 20,
    connections: int = CONNECTIONS_PER_BLOB,
) -> None:
    """Put blob ``digest`` (``size`` bytes, served at ``url``) into ``store``, verified.

    Ranges of ``part_size`` bytes are fetched over up to ``connections`` connections; a partial
    download from an earlier attempt is resumed. ``progress(completed, total)`` (sync or async) is
    called at the start, at most every PROGRESS_INTERVAL while bytes arrive, and once at the end.
    Raises InvalidDigest (data does not match; partial data deleted), UpstreamUnavailable (network
    gave up; partial data kept for resume), StoreError (local disk).
    """
    d = parse_digest(digest)
    if type(size) is not int or size < 0:
        raise InvalidDigest(f"blob {d}: invalid size {size!r}")

    async def report_present() -> None:
        if progress is not None:
            r = progress(size, size)
            if inspect.isawaitable(r):
                await r

    if store.has_blob(d):
        await report_present()
        return
    make_dirs(partial_dir(store))
    async with _blob_lock(_paths(store, d)[2]):
        if store.has_blob(d):  # another pull finished it while we waited
            await report_present()
            return
        try:
            await _BlobJob(store, d, size, url, http, progress, part_size, connections).run()
        except EnginehouseError:
            raise
        except OSError as e:
            raise StoreError(f"downloading blob {d}: {e}") from e
