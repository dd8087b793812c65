"""A small Ollama-protocol registry (Docker registry v2 subset) for tests and benchmarks.

Two aiohttp servers on free loopback ports, run in a background thread (:class:`FakeRegistry`) or
as a process (``python tests/fakes/registry.py --blob FILE ... --model ns/model:tag``, which prints
one JSON line with its address, then serves until killed):

  registry   GET /v2/<ns>/<model>/manifests/<tag>   the manifest (404 MANIFEST_UNKNOWN if none)
             GET /v2/<ns>/<model>/blobs/<digest>    307 to the CDN (or the bytes when cdn=False)
             GET /token?service=&scope=             {"token": ...} (the realm)
             every /v2/ request wants ``Authorization: Bearer <token>`` when auth=True (else 401
             with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``)
  cdn        GET /cdn/<digest>?sig=...              the bytes; records the headers it received

Pushes (HEAD of a blob, upload sessions, manifest PUT) are tests/fakes/registry_uploads.py's: a pushed
model is pulled back from the same registry.

Blobs are real files; single byte ranges are served as 206. Fault switches (attributes, or
``POST /_fake/control`` with the same names): ``drop_after`` {digest: n} close the next response's
connection after n bytes (once); ``corrupt`` [digest] flip bytes; ``stall`` {digest: [after, seconds,
times]} pause mid-body; ``rate`` bytes/s per response; ``ranges`` False ignores Range;
``fail_after`` {digest: n} once n bytes of it were sent in all, abort its responses and answer 503
until cleared. Counters: :class:`Stats` (``GET /_fake/stats``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.registry_uploads import Uploads
from tests.fakes.threaded import ThreadedApps, parse_range

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
SERVICE = "fake-registry"
CHUNK = 256 << 10


@dataclass
class Stats:
    manifest_requests: int = 0
    token_requests: int = 0
    unauthorized: int = 0
    blob_requests: int = 0  # every blob GET, registry and CDN
    range_requests: Counter[str] = field(default_factory=Counter)  # digest -> 206 responses
    bytes_sent: Counter[str] = field(default_factory=Counter)  # digest -> body bytes written
    cdn_headers: list[dict[str, str]] = field(default_factory=list)
    registry_headers: list[dict[str, str]] = field(default_factory=list)
    blob_heads: int = 0
    upload_requests: Counter[str] = field(default_factory=Counter)  # method -> upload-session requests
    upload_bytes: int = 0  # body bytes received by upload sessions
    manifest_puts: int = 0

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["range_requests"] = dict(self.range_requests)
        d["bytes_sent"] = dict(self.bytes_sent)
        d["upload_requests"] = dict(self.upload_requests)
        return d


def _errors(code: str, message: str, status: int, **headers: str) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


class FakeRegistry(ThreadedApps):
    thread_name = "fake-registry"

    def __init__(self, root: Path, *, auth: bool = True, cdn: bool = True, ranges: bool = True) -> None:
        self.root = Path(root)
        self.auth, self.cdn, self.ranges = auth, cdn, ranges
        self.blobs: dict[str, Path] = {}
        self.manifests: dict[tuple[str, str, str], bytes] = {}
        self.tokens: set[str] = set()
        self.push_tokens: set[str] = set()  # issued for a scope that ends in "push"
        self.stats = Stats()
        # faults
        self.drop_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.stall: dict[str, list[float]] = {}  # digest -> [after_bytes, seconds, times]
        self.rate: float | None = None
        self.fail_after: dict[str, int] = {}
        self.outage: set[str] = set()
        self.cdn_hostname = "127.0.0.1"  # where blob GETs are redirected (another host name: "localhost")
        self.uploads = Uploads(self)
        self.port = 0
        self.cdn_port = 0
        super().__init__()

    # -- content ----------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def name(self, ns: str, model: str, tag: str) -> str:
        return f"{self.host}/{ns}/{model}:{tag}"

    def add_blob_file(self, path: Path) -> tuple[str, int]:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        self.blobs[digest] = Path(path)
        return digest, Path(path).stat().st_size

    def add_blob_bytes(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        src = self.root / "src-blobs"
        src.mkdir(parents=True, exist_ok=True)
        path = src / digest.replace(":", "-")
        path.write_bytes(data)
        self.blobs[digest] = path
        return digest, len(data)

    def add_model(
        self,
        ns: str,
        model: str,
        tag: str,
        model_file: Path,
        *,
        template: str | None = "{{ .Prompt }}",
        params: dict[str, Any] | None = None,
    ) -> bytes:
        """A manifest like ollama.com's: model layer, template/params layers, config; its bytes."""
        layers = []
        d, n = self.add_blob_file(model_file)
        layers.append({"mediaType": MEDIA_MODEL, "digest": d, "size": n})
        if template is not None:
            d, n = self.add_blob_bytes(template.encode())
            layers.append({"mediaType": MEDIA_TEMPLATE, "digest": d, "size": n})
        if params is not None:
            d, n = self.add_blob_bytes(json.dumps(params).encode())
            layers.append({"mediaType": MEDIA_PARAMS, "digest": d, "size": n})
        config = {
            "model_format": "gguf",
            "model_family": "llama",
            "model_families": ["llama"],
            "model_type": "135M",
            "file_type": "Q4_1",
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]},
        }
        cd, cn = self.add_blob_bytes(json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": cd, "size": cn},
            "layers": layers,
        }
        data = json.dumps(manifest).encode()
        self.manifests[(ns, model, tag)] = data
        return data

    def set_manifest(self, ns: str, model: str, tag: str, data: bytes) -> None:
        self.manifests[(ns, model, tag)] = data

    def reset_stats(self) -> None:
        self.stats = Stats()

    def control(self, body: dict[str, Any]) -> None:
        """Set fault switches from JSON (the same names as the attributes)."""
        if body.get("reset_stats"):
            self.reset_stats()
        for key in ("drop_after", "stall", "fail_after"):
            if key in body:
                setattr(self, key, dict(body[key]))
        if "corrupt" in body:
            self.corrupt = set(body["corrupt"])
        if "rate" in body:
            self.rate = body["rate"]
        if "ranges" in body:
            self.ranges = bool(body["ranges"])
        if body.get("clear_outage"):
            self.outage.clear()
        if "drop_upload_after" in body:
            self.uploads.drop_upload_after = body["drop_upload_after"]

    # -- handlers ---------------------------------------------------------------------------------

    def authorized(self, request: web.Request, *, push: bool = False) -> bool:
        if not self.auth:
            return True
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:] in (self.push_tokens if push else self.tokens)

    def challenge(self, ns: str, model: str, *, push: bool = False) -> web.Response:
        self.stats.unauthorized += 1
        challenge = (
            f'Bearer realm="http://127.0.0.1:{self.port}/token",service="{SERVICE}",'
            f'scope="repository:{ns}/{model}:{"pull,push" if push else "pull"}"'
        )
        return _errors("UNAUTHORIZED", "authentication required", 401, **{"WWW-Authenticate": challenge})

    async def _token(self, request: web.Request) -> web.Response:
        self.stats.token_requests += 1
        if request.query.get("service") != SERVICE or not request.query.get("scope", "").startswith(
            "repository:"
        ):
            return _errors("DENIED", "bad token request", 400)
        token = "tok-" + secrets.token_hex(8)
        self.tokens.add(token)
        if request.query["scope"].endswith("push"):
            self.push_tokens.add(token)
        return web.json_response({"token": token, "expires_in": 300})

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        ns, model, tag = (request.match_info[k] for k in ("ns", "model", "tag"))
        self.stats.registry_headers.append(dict(request.headers))
        if not self.authorized(request):
            return self.challenge(ns, model)
        self.stats.manifest_requests += 1
        data = self.manifests.get((ns, model, tag))
        if data is None:
            return _errors("MANIFEST_UNKNOWN", "manifest unknown", 404)
        return web.Response(
            body=data,
            headers={
                "Content-Type": MANIFEST_MEDIA_TYPE,
                "Docker-Content-Digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            },
        )

    async def _registry_blob(self, request: web.Request) -> web.StreamResponse:
        ns, model, digest = (request.match_info[k] for k in ("ns", "model", "digest"))
        self.stats.registry_headers.append(dict(request.headers))
        if not self.authorized(request):
            return self.challenge(ns, model)
        if digest not in self.blobs:
            return _errors("BLOB_UNKNOWN", "blob unknown to registry", 404)
        if self.cdn:
            self.stats.blob_requests += 1
            sig = secrets.token_hex(6)
            location = f"http://{self.cdn_hostname}:{self.cdn_port}/cdn/{digest}?sig={sig}&expires=9999999999"
            return web.Response(status=307, headers={"Location": location})
        return await self._serve(request, digest)

    async def _cdn_blob(self, request: web.Request) -> web.StreamResponse:
        self.stats.cdn_headers.append(dict(request.headers))
        digest = request.match_info["digest"]
        if digest not in self.blobs or "sig" not in request.query:
            return _errors("BLOB_UNKNOWN", "no such object", 404)
        return await self._serve(request, digest)

    async def _serve(self, request: web.Request, digest: str) -> web.StreamResponse:
        self.stats.blob_requests += 1
        if digest in self.outage:
            return _errors("UNAVAILABLE", "service unavailable", 503)
        path = self.blobs[digest]
        size = path.stat().st_size
        try:
            rng = parse_range(request.headers.get("Range"), size) if self.ranges else None
        except ValueError:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        start, end = rng or (0, size)
        headers = {
            "Accept-Ranges": "bytes" if self.ranges else "none",
            "Content-Type": "application/octet-stream",
        }
        if rng is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            self.stats.range_requests[digest] += 1
        status = 206 if rng is not None else 200
        faulty = (
            self.rate is not None
            or not self.ranges
            or digest in self.drop_after
            or digest in self.corrupt
            or digest in self.stall
            or digest in self.fail_after
        )
        if not faulty:  # the fast path: sendfile, as a real CDN would be fast
            self.stats.bytes_sent[digest] += end - start
            return web.FileResponse(path, headers={"Cache-Control": "no-store"})
        return await self._stream(request, path, digest, start, end, status, headers)

    async def _stream(
        self,
        request: web.Request,
        path: Path,
        digest: str,
        start: int,
        end: int,
        status: int,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        drop = self.drop_after.pop(digest, None)
        stall = self.stall.get(digest)
        if stall is not None:
            stall[2] -= 1
            if stall[2] <= 0:
                del self.stall[digest]
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start
        await resp.prepare(request)
        sent = 0
        off = start
        chunk = CHUNK if self.rate is None else max(16 << 10, min(CHUNK, int(self.rate / 20)))
        fd = os.open(path, os.O_RDONLY)
        try:
            while off < end:
                if stall is not None and sent >= stall[0]:
                    await asyncio.sleep(stall[1])
                    stall = None
                n = min(chunk, end - off)
                if drop is not None:
                    n = min(n, drop - sent)
                data = os.pread(fd, n, off)
                if digest in self.corrupt:
                    flipped = bytearray(data)
                    flipped[len(flipped) // 2] ^= 0xFF
                    data = bytes(flipped)
                if digest in self.outage:
                    request.transport.close()  # type: ignore[union-attr]
                    return resp
                try:
                    await resp.write(data)
                except (ConnectionError, RuntimeError):
                    return resp
                sent += n
                off += n
                self.stats.bytes_sent[digest] += n
                limit = self.fail_after.get(digest)
                if limit is not None and self.stats.bytes_sent[digest] >= limit:
                    del self.fail_after[digest]
                    self.outage.add(digest)
                if drop is not None and sent >= drop:
                    await asyncio.sleep(0.05)  # let the bytes leave before the connection goes
                    request.transport.close()  # type: ignore[union-attr]
                    return resp
                if self.rate is not None:
                    await asyncio.sleep(n / self.rate)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
        finally:
            os.close(fd)
        return resp

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_json())

    async def _control(self, request: web.Request) -> web.Response:
        self.control(await request.json())
        return web.json_response({"ok": True})

    # -- lifecycle --------------------------------------------------------------------------------

    async def start_async(self, port: int = 0, cdn_port: int = 0) -> None:
        registry = web.Application()
        registry.router.add_get("/v2/{ns}/{model}/manifests/{tag}", self._manifest)
        registry.router.add_get("/v2/{ns}/{model}/blobs/{digest}", self._registry_blob, allow_head=False)
        self.uploads.add_routes(registry)
        registry.router.add_get("/token", self._token)
        registry.router.add_get("/_fake/stats", self._stats)
        registry.router.add_post("/_fake/control", self._control)
        cdn = web.Application()
        cdn.router.add_get("/cdn/{digest}", self._cdn_blob)
        self.port, self.cdn_port = await self.serve((registry, port), (cdn, cdn_port))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="a directory for small generated blobs")
    parser.add_argument("--model", action="append", default=[], metavar="NS/MODEL:TAG=FILE")
    parser.add_argument("--no-auth", action="store_true")
    parser.add_argument("--no-cdn", action="store_true")
    args = parser.parse_args()
    reg = FakeRegistry(args.root, auth=not args.no_auth, cdn=not args.no_cdn)
    models = {}
    for spec in args.model:
        ref, _, file = spec.partition("=")
        ns, _, rest = ref.partition("/")
        model, _, tag = rest.partition(":")
        data = reg.add_model(ns, model, tag or "latest", Path(file))
        models[ref] = json.loads(data)

    async def serve() -> None:
        await reg.start_async()
        print(json.dumps({"host": reg.host, "cdn_port": reg.cdn_port, "manifests": models}), flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
