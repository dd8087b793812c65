"""The push side of the fake registry (tests/fakes/registry.py): the OCI distribution upload flow, as
Docker's registry answers it.

  HEAD  /v2/<ns>/<model>/blobs/<digest>               200 (Content-Length, Docker-Content-Digest) or 404
  POST  /v2/<ns>/<model>/blobs/uploads/               202, Location: /v2/<ns>/<model>/blobs/uploads/<id>
  PATCH <location>  Content-Range: a-b                202, Range: 0-<last byte held>; 416 when a != held
  GET   <location>                                    204, Range: 0-<last byte held> (``0-0`` when empty)
  PUT   <location>?digest=sha256:...  [body]          201 once the bytes hash to the digest, else 400
  PUT   /v2/<ns>/<model>/manifests/<tag>              201 when every blob it names is here, else 400

Writes want a token issued for a ``...:pull,push`` scope (a pull token gets a fresh challenge).
Fault switch ``drop_upload_after`` (bytes): the upload request whose body would take a session past
that many bytes keeps what arrived up to there (as Docker's registry does) and has its connection
closed, once. ``stall_upload_at`` (bytes, seconds): the same request stops reading there for that long,
once (what came before it is kept).
Counters in :class:`~tests.fakes.registry.Stats`: ``upload_bytes`` (body bytes received),
``upload_requests`` (by method), ``blob_heads``, ``manifest_puts``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.fakes.registry import FakeRegistry

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def _errors(code: str, message: str, status: int, **headers: str) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


class Uploads:
    """Upload sessions and handlers; ``reg`` supplies blobs, manifests, auth and stats."""

    def __init__(self, reg: FakeRegistry) -> None:
        self.reg = reg
        self.sessions: dict[str, Path] = {}  # id -> the bytes received so far
        self.drop_upload_after: int | None = None
        self.stall_upload_at: tuple[int, float] | None = None

    def _dir(self, name: str) -> Path:
        path = self.reg.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _denied(self, request: web.Request) -> web.Response | None:
        ns, model = request.match_info["ns"], request.match_info["model"]
        if not self.reg.authorized(request, push=True):
            return self.reg.challenge(ns, model, push=True)
        return None

    def _status(self, request: web.Request, sid: str, status: int) -> web.Response:
        held = self.sessions[sid].stat().st_size
        ns, model = request.match_info["ns"], request.match_info["model"]
        return web.Response(
            status=status,
            headers={
                "Location": f"/v2/{ns}/{model}/blobs/uploads/{sid}",
                "Range": f"0-{max(0, held - 1)}",
                "Docker-Upload-UUID": sid,
            },
        )

    async def head_blob(self, request: web.Request) -> web.Response:
        self.reg.stats.blob_heads += 1
        if not self.reg.authorized(request):
            return self.reg.challenge(request.match_info["ns"], request.match_info["model"])
        path = self.reg.blobs.get(request.match_info["digest"])
        if path is None:
            return web.Response(status=404)
        headers = {"Docker-Content-Digest": request.match_info["digest"]}
        return web.Response(status=200, headers={**headers, "Content-Length": str(path.stat().st_size)})

    async def start(self, request: web.Request) -> web.Response:
        self.reg.stats.upload_requests["POST"] += 1
        if denied := self._denied(request):
            return denied
        sid = secrets.token_hex(8)
        self.sessions[sid] = self._dir("uploads") / sid
        self.sessions[sid].write_bytes(b"")
        return self._status(request, sid, 202)

    async def _receive(self, request: web.Request, path: Path) -> bool:
        """Append the body to ``path``; False when the connection was dropped on purpose."""
        held = path.stat().st_size
        end = held + (request.content_length or 0)
        drop = self.drop_upload_after
        if drop is not None and held < drop < end:
            self.drop_upload_after = None
            drop -= held  # where in this body
        else:
            drop = None
        stall = self.stall_upload_at
        if stall is not None and held < stall[0] < end:
            self.stall_upload_at = None
        else:
            stall = None
        got = 0
        with open(path, "ab") as fh:
            async for data in request.content.iter_chunked(256 << 10):
                if stall is not None and held + got + len(data) >= stall[0]:
                    keep = stall[0] - held - got
                    fh.write(data[:keep])
                    fh.flush()
                    self.reg.stats.upload_bytes += keep
                    await asyncio.sleep(stall[1])  # the client gives up and closes the connection
                    request.transport.close()  # type: ignore[union-attr]
                    return False
                if drop is not None and got + len(data) >= drop:
                    fh.write(data[: drop - got])
                    self.reg.stats.upload_bytes += drop - got
                    fh.flush()
                    request.transport.close()  # type: ignore[union-attr]
                    return False
                fh.write(data)
                got += len(data)
                self.reg.stats.upload_bytes += len(data)
        return True

    async def status(self, request: web.Request) -> web.Response:
        self.reg.stats.upload_requests["GET"] += 1
        if denied := self._denied(request):
            return denied
        sid = request.match_info["sid"]
        if sid not in self.sessions:
            return _errors("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", 404)
        return self._status(request, sid, 204)

    async def patch(self, request: web.Request) -> web.Response:
        self.reg.stats.upload_requests["PATCH"] += 1
        if denied := self._denied(request):
            return denied
        sid = request.match_info["sid"]
        if sid not in self.sessions:
            return _errors("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", 404)
        path = self.sessions[sid]
        rng = request.headers.get("Content-Range")
        if rng is not None and int(rng.partition("-")[0]) != path.stat().st_size:
            return self._status(request, sid, 416)
        if not await self._receive(request, path):
            return web.Response(status=500)  # never seen: the connection is gone
        return self._status(request, sid, 202)

    async def finish(self, request: web.Request) -> web.Response:
        self.reg.stats.upload_requests["PUT"] += 1
        if denied := self._denied(request):
            return denied
        sid = request.match_info["sid"]
        if sid not in self.sessions:
            return _errors("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", 404)
        path = self.sessions[sid]
        if not await self._receive(request, path):
            return web.Response(status=500)
        digest = request.query.get("digest", "")
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        if "sha256:" + h.hexdigest() != digest:
            del self.sessions[sid]
            path.unlink()
            return _errors("DIGEST_INVALID", "provided digest did not match uploaded content", 400)
        del self.sessions[sid]
        final = self._dir("pushed") / digest.replace(":", "-")
        path.replace(final)
        self.reg.blobs[digest] = final
        ns, model = request.match_info["ns"], request.match_info["model"]
        return web.Response(
            status=201,
            headers={"Location": f"/v2/{ns}/{model}/blobs/{digest}", "Docker-Content-Digest": digest},
        )

    async def put_manifest(self, request: web.Request) -> web.Response:
        self.reg.stats.manifest_puts += 1
        if denied := self._denied(request):
            return denied
        if request.content_type != MANIFEST_MEDIA_TYPE:
            return _errors("MANIFEST_INVALID", f"unexpected media type {request.content_type}", 400)
        data = await request.read()
        try:
            manifest: dict[str, Any] = json.loads(data)
            entries = [*manifest["layers"], manifest["config"]]
        except (ValueError, KeyError, TypeError):
            return _errors("MANIFEST_INVALID", "manifest invalid", 400)
        missing = [e.get("digest") for e in entries if e.get("digest") not in self.reg.blobs]
        if missing:
            return _errors("MANIFEST_BLOB_UNKNOWN", f"blob unknown to registry: {missing[0]}", 400)
        ns, model, tag = (request.match_info[k] for k in ("ns", "model", "tag"))
        self.reg.manifests[(ns, model, tag)] = data
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return web.Response(status=201, headers={"Docker-Content-Digest": digest})

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_route("HEAD", "/v2/{ns}/{model}/blobs/{digest}", self.head_blob)
        r.add_post("/v2/{ns}/{model}/blobs/uploads/", self.start)
        r.add_get("/v2/{ns}/{model}/blobs/uploads/{sid}", self.status, allow_head=False)
        r.add_patch("/v2/{ns}/{model}/blobs/uploads/{sid}", self.patch)
        r.add_put("/v2/{ns}/{model}/blobs/uploads/{sid}", self.finish)
        r.add_put("/v2/{ns}/{model}/manifests/{tag}", self.put_manifest)
