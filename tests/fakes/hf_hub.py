"""A small Hugging Face Hub for tests: enough of its API for huggingface_hub and enginehouse.

Two aiohttp servers on free loopback ports, run in a background thread (:class:`FakeHub`):

  hub   GET /api/models/<owner>/<repo>[/revision/<rev>][?blobs=true]
                        model info: id, sha, gated, private, siblings [{rfilename (+ size, blobId,
                        lfs {sha256, size, pointerSize} with blobs=true)}]
        GET /api/models/<owner>/<repo>/tree/<rev>[/<path>][?recursive=true]
                        [{type: file|directory, path, oid, size, lfs {oid, size, pointerSize}}]
        HEAD|GET /<owner>/<repo>/resolve/<rev>/<path>
                        X-Repo-Commit, ETag (and for LFS files X-Linked-Etag, X-Linked-Size and a
                        302 to the CDN); files kept in git are served here, with ranges
  cdn   GET /cdn/<sha256>?sig=...   the bytes (ranges as 206); records the headers it received

Repositories hold REAL files (paths) or small byte strings; a file is "LFS" when its name ends in
.gguf/.safetensors/.bin or it is 10 MiB or more. ``gated`` repositories list publicly (as the hub
does) but answer 401 ``X-Error-Code: GatedRepo`` to downloads without a valid token
(``gated_listing=False``: the listing too); ``private`` ones answer 401 RepoNotFound to everything
without one; unknown repositories answer 401 RepoNotFound without a token and 404 with one (so does
the hub). Valid tokens: ``tokens``; those also in ``ungranted`` get 403 GatedRepo from gated downloads
(the terms were not accepted). Errors carry a ``WWW-Authenticate: Bearer realm="Authentication
required"`` header, as some hub answers do.

Fault switches (keys are a file's sha256 hex): ``drop_after`` {sha: n} closes the next CDN response
after n bytes (once); ``fail_after`` {sha: n}: once n bytes of it were sent in all, its responses
break off and then answer 503 until ``outage`` is cleared. Counters: :class:`Stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.threaded import ThreadedApps, parse_range

CHUNK = 256 << 10
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")
LFS_MIN_SIZE = 10 << 20
POINTER_SIZE = 134


@dataclass
class HubFile:
    path: str
    source: Path
    size: int
    sha256: str
    oid: str  # git blob sha1
    lfs: bool


@dataclass
class Repo:
    owner: str
    name: str
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    private: bool = False

    @property
    def repo_id(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass
class Stats:
    api_requests: int = 0  # model info
    tree_requests: int = 0
    resolve_requests: int = 0  # HEAD and GET
    cdn_requests: int = 0
    unauthorized: int = 0
    range_requests: Counter[str] = field(default_factory=Counter)  # sha256 -> 206 responses (CDN)
    bytes_sent: Counter[str] = field(default_factory=Counter)  # sha256 or oid -> body bytes
    hub_headers: list[dict[str, str]] = field(default_factory=list)
    cdn_headers: list[dict[str, str]] = field(default_factory=list)


def _hashes(path: Path) -> tuple[str, str]:
    size = path.stat().st_size
    h256 = hashlib.sha256()
    h1 = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            h256.update(chunk)
            h1.update(chunk)
    return h256.hexdigest(), h1.hexdigest()


class FakeHub(ThreadedApps):
    thread_name = "fake-hf-hub"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tokens: set[str] = set()
        self.ungranted: set[str] = set()  # valid tokens without access to gated repositories
        self.gated_listing = True  # gated repositories list without a token (the hub's behaviour)
        self.stats = Stats()
        self.drop_after: dict[str, int] = {}
        self.fail_after: dict[str, int] = {}
        self.outage: set[str] = set()
        self.port = 0
        self.cdn_port = 0
        self._hash_cache: dict[tuple[str, int, int], tuple[str, str]] = {}
        self._by_sha: dict[str, Path] = {}
        super().__init__()

    # -- content ----------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _file(self, path: str, source: Path | bytes) -> HubFile:
        if isinstance(source, bytes):
            src = self.root / "src" / hashlib.sha256(source).hexdigest()
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(source)
            source = src
        source = Path(source)
        st = source.stat()
        key = (str(source.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._hash_cache:
            self._hash_cache[key] = _hashes(source)
        sha256, oid = self._hash_cache[key]
        lfs = path.lower().endswith(LFS_SUFFIXES) or st.st_size >= LFS_MIN_SIZE
        if lfs:
            self._by_sha[sha256] = source
        return HubFile(path, source, st.st_size, sha256, oid, lfs)

    def add_repo(
        self,
        owner: str,
        name: str,
        files: dict[str, Path | bytes],
        *,
        gated: bool = False,
        private: bool = False,
        ref: str = "main",
    ) -> str:
        """A repository (or a new commit of one, which ``ref`` then points at); the commit sha."""
        repo = self.repos.setdefault((owner.lower(), name.lower()), Repo(owner, name))
        repo.gated, repo.private = gated, private
        entries = {p: self._file(p, src) for p, src in files.items()}
        commit = hashlib.sha1(
            json.dumps(
                [repo.repo_id, len(repo.commits), sorted((p, f.oid) for p, f in entries.items())]
            ).encode(),
            usedforsecurity=False,
        ).hexdigest()
        repo.commits[commit] = entries
        repo.refs[ref] = commit
        return commit

    def add_dir(self, owner: str, name: str, directory: Path, **kw: Any) -> str:
        files: dict[str, Path | bytes] = {
            p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()
        }
        return self.add_repo(owner, name, files, **kw)

    def reset_stats(self) -> None:
        self.stats = Stats()

    # -- helpers ----------------------------------------------------------------------------------

    def _token_ok(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.tokens

    def _error(self, status: int, message: str, code: str | None = None) -> web.Response:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if status == 401:
            self.stats.unauthorized += 1
            headers["WWW-Authenticate"] = 'Bearer realm="Authentication required", charset="UTF-8"'
        return web.json_response({"error": message}, status=status, headers=headers)

    def _lookup(
        self, request: web.Request, *, download: bool
    ) -> tuple[Repo, str, dict[str, HubFile]] | web.Response:
        """The repository and commit a request names, or the hub's error answer."""
        owner, name = request.match_info["owner"], request.match_info["repo"]
        rev = request.match_info.get("rev", "main")
        token_ok = self._token_ok(request)
        header = request.headers.get("Authorization", "")
        if header and not token_ok:
            return self._error(401, "Invalid credentials in Authorization header")
        repo = self.repos.get((owner.lower(), name.lower()))
        if repo is None or (repo.private and not token_ok):
            if token_ok:
                return self._error(404, "Repository not found", "RepoNotFound")
            return self._error(401, "Repository not found", "RepoNotFound")
        if repo.gated and not token_ok and (download or not self.gated_listing):
            return self._error(
                401,
                f"Access to model {repo.repo_id} is restricted. You must have access to it and be"
                " authenticated to access it. Please log in.",
                "GatedRepo",
            )
        if repo.gated and download and header[7:] in self.ungranted:
            return self._error(
                403,
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list."
                f" Visit {self.endpoint}/{repo.repo_id} to ask for access.",
                "GatedRepo",
            )
        commit = repo.refs.get(rev, rev if rev in repo.commits else None)
        if commit is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo, commit, repo.commits[commit]

    # -- hub handlers -----------------------------------------------------------------------------

    async def _model_info(self, request: web.Request) -> web.Response:
        self.stats.api_requests += 1
        self.stats.hub_headers.append(dict(request.headers))
        found = self._lookup(request, download=False)
        if isinstance(found, web.Response):
            return found
        repo, commit, files = found
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for f in files.values():
            s: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                s.update(size=f.size, blobId=f.oid)
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": POINTER_SIZE}
            siblings.append(s)
        info = {
            "_id": secrets.token_hex(12),
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.owner,
            "sha": commit,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["gguf"],
            "siblings": siblings,
        }
        return web.json_response(info)

    async def _tree(self, request: web.Request) -> web.Response:
        self.stats.tree_requests += 1
        self.stats.hub_headers.append(dict(request.headers))
        found = self._lookup(request, download=False)
        if isinstance(found, web.Response):
            return found
        _, _, files = found
        base = request.match_info.get("path", "").strip("/")
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        prefix = f"{base}/" if base else ""
        entries: dict[str, dict[str, Any]] = {}
        for f in files.values():
            if not f.path.startswith(prefix):
                continue
            rest = f.path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):  # the directories on the way
                d = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    entries.setdefault(d, {"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
            if recursive or len(rest) == 1:
                e: dict[str, Any] = {"type": "file", "oid": f.oid, "size": f.size, "path": f.path}
                if f.lfs:
                    e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": POINTER_SIZE}
                entries[f.path] = e
        return web.json_response([entries[k] for k in sorted(entries)])

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self.stats.resolve_requests += 1
        self.stats.hub_headers.append(dict(request.headers))
        found = self._lookup(request, download=True)
        if isinstance(found, web.Response):
            return found
        _, commit, files = found
        f = files.get(request.match_info["path"])
        if f is None:
            resp = self._error(404, "Entry not found", "EntryNotFound")
            resp.headers["X-Repo-Commit"] = commit
            return resp
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if f.lfs:
            sig = secrets.token_hex(6)
            headers.update(
                {
                    "ETag": f'"{f.oid}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "Location": f"http://127.0.0.1:{self.cdn_port}/cdn/{f.sha256}?sig={sig}&Expires=9999999999",
                }
            )
            return web.Response(status=302, headers=headers)
        headers["ETag"] = f'"{f.oid}"'
        return await self._serve(request, f.source, f.oid, headers)

    # -- cdn --------------------------------------------------------------------------------------

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        self.stats.cdn_requests += 1
        self.stats.cdn_headers.append(dict(request.headers))
        sha = request.match_info["sha"]
        path = self._by_sha.get(sha)
        if path is None or "sig" not in request.query:
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        if sha in self.outage:
            return web.Response(status=503, text="slow down")
        return await self._serve(request, path, sha, {"ETag": f'"{sha}"', "Accept-Ranges": "bytes"}, cdn=True)

    async def _serve(
        self, request: web.Request, path: Path, key: str, headers: dict[str, str], cdn: bool = False
    ) -> web.StreamResponse:
        size = path.stat().st_size
        try:
            rng = parse_range(request.headers.get("Range"), size)
        except ValueError:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        start, end = rng or (0, size)
        headers = {**headers, "Content-Type": "application/octet-stream"}
        if rng is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            if cdn:
                self.stats.range_requests[key] += 1
        resp = web.StreamResponse(status=206 if rng is not None else 200, headers=headers)
        resp.content_length = end - start
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        drop = self.drop_after.pop(key, None)
        sent, off = 0, start
        fd = os.open(path, os.O_RDONLY)
        try:
            while off < end:
                n = min(CHUNK, end - off)
                if drop is not None:
                    n = min(n, drop - sent)
                if key in self.outage:
                    request.transport.close()  # type: ignore[union-attr]
                    return resp
                try:
                    await resp.write(os.pread(fd, n, off))
                except (ConnectionError, RuntimeError):
                    return resp
                sent += n
                off += n
                self.stats.bytes_sent[key] += n
                limit = self.fail_after.get(key)
                if limit is not None and self.stats.bytes_sent[key] >= limit:
                    del self.fail_after[key]
                    self.outage.add(key)
                if drop is not None and sent >= drop:
                    await asyncio.sleep(0.05)  # let the bytes leave before the connection goes
                    request.transport.close()  # type: ignore[union-attr]
                    return resp
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
        finally:
            os.close(fd)
        return resp

    # -- lifecycle --------------------------------------------------------------------------------

    async def start_async(self) -> None:
        hub = web.Application()
        r = hub.router
        r.add_get("/api/models/{owner}/{repo}", self._model_info)
        r.add_get("/api/models/{owner}/{repo}/revision/{rev}", self._model_info)
        r.add_get("/api/models/{owner}/{repo}/tree/{rev}", self._tree)
        r.add_get("/api/models/{owner}/{repo}/tree/{rev}/{path:.+}", self._tree)
        r.add_get("/{owner}/{repo}/resolve/{rev}/{path:.+}", self._resolve)  # HEAD as well
        cdn = web.Application()
        cdn.router.add_get("/cdn/{sha}", self._cdn)
        self.port, self.cdn_port = await self.serve((hub, 0), (cdn, 0))
