"""Pull GGUF models from Hugging Face under the names Ollama users already type.

    hf.co/{owner}/{repo}[:{quant}]          (also huggingface.co/...)

1. List the repository at a revision (default ``main``)::

       GET {endpoint}/api/models/{owner}/{repo}/revision/{revision}?blobs=true
       -> {"id", "sha": <commit>, "gated", "siblings": [{"rfilename", "size", "lfs": {"sha256", "size"}}]}

   (what ``HfApi.model_info(files_metadata=True)`` sends). The endpoint is the ``endpoint``
   argument, else ``HF_ENDPOINT``, else https://huggingface.co; the token is the ``token`` argument,
   else ``HF_TOKEN``, and it is bound to the endpoint's origin only.
2. Pick the GGUF whose file name carries ``{quant}`` (case-insensitive); without a quant, Q4_K_M
   if there is one, else the only GGUF. Anything else is an InvalidRequest that lists the choices.
   Split GGUFs (``-00001-of-00003.gguf``) and ``mmproj`` projector files are not pulled (yet).
3. Download ``{endpoint}/{owner}/{repo}/resolve/{commit}/{file}`` (the hub 302s to a CDN, which
   gets no token) with :func:`download_blob`: parallel ranges, resume, and the sha256 from the
   listing verified. A file the listing gives no sha256 for is refused.
4. Register the blob as ``hf.co/{owner}/{repo}:{quant}`` the way an import does (no template
   layer: the GGUF carries its chat template). Pulled without a quant, the name typed
   (``...:latest``) is written as well, so it resolves as it does after an Ollama pull.

Progress events are those of an Ollama pull. Pulling what is already there costs the listing only.

:func:`download_hf_repo` fetches a whole repository (safetensors, config, tokenizer: for engines
that read the Hugging Face layout) with ``huggingface_hub.snapshot_download``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from enginehouse.errors import (
    EnginehouseError,
    InvalidRequest,
    ModelNotFound,
    StoreError,
    UpstreamUnavailable,
)
from enginehouse.store.download import (
    BearerAuth,
    HttpSession,
    check_free_space,
    download_blob,
    pending_bytes,
)
from enginehouse.store.names import DEFAULT_TAG, ModelName
from enginehouse.store.store import ModelRecord, Store

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_QUANT",
    "HF_HOSTS",
    "HfAccessDenied",
    "HfFile",
    "HfRepoNotFound",
    "choose_gguf",
    "download_hf_repo",
    "hf_endpoint",
    "hf_repo_root",
    "hf_token",
    "parse_hf_name",
    "pull_hf",
]

HF_HOSTS = frozenset({"hf.co", "huggingface.co"})
HF_STORE_HOST = "hf.co"
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
DEFAULT_QUANT = "Q4_K_M"
MAX_LISTING_BYTES = 32 << 20  # a listing of a repository with thousands of files is a few MB
MAX_ERROR_BYTES = 64 << 10

PullProgress = Callable[[dict[str, Any]], Awaitable[None] | None]

_REPO_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})$", re.IGNORECASE)
# Quantisation labels as they appear in GGUF file names (Q4_K_M, IQ2_XXS, Q4_0_4_4, F16, BF16, ...).
_QUANT_LABEL_RE = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d+(?:_[A-Za-z0-9]+)*|TQ\d+_\d+|MXFP4(?:_MOE)?|BF16|FP16|F16|FP32|F32))"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)


# -- errors ---------------------------------------------------------------------------------------


class HfAccessDenied(InvalidRequest):
    """The repository is gated or private and no (or no sufficient) token was given."""

    status = 403


class HfRepoNotFound(ModelNotFound):
    """Hugging Face has no such repository, revision or file; the message carries the hub's words."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(name)
        self.detail = detail
        self.message = f"model '{name}' not found on Hugging Face: {detail}"
        self.args = (self.message,)


# -- configuration --------------------------------------------------------------------------------


def hf_endpoint(endpoint: str | None = None) -> str:
    """The hub to talk to: ``endpoint``, else ``HF_ENDPOINT``, else https://huggingface.co."""
    value = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise InvalidRequest(
            f"invalid Hugging Face endpoint {value!r}: expected http(s)://host[:port][/path]"
        )
    return value


def hf_token(token: str | None = None) -> str | None:
    """The token: ``token``, else ``HF_TOKEN`` (or the older ``HUGGING_FACE_HUB_TOKEN``)."""
    for value in (token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        if value and value.strip():
            return value.strip()
    return None


def hf_repo_root(store: Store) -> Path:
    """Where :func:`download_hf_repo` puts repositories for ``store``: ``<root>/hf``."""
    return store.root / "hf"


@dataclass(frozen=True)
class HfRef:
    owner: str  # as typed (the hub resolves names case-insensitively, the store keeps them lowercase)
    repo: str
    quant: str | None  # None: choose (the name had no tag, or "latest")
    name: ModelName  # as typed, host normalised to hf.co

    @property
    def repo_id(self) -> str:
        return f"{self.owner}/{self.repo}"


def parse_hf_name(name: str) -> HfRef:
    """``hf.co/{owner}/{repo}[:{quant}]`` (or ``huggingface.co/...``), validated by ModelName's rules."""
    mn = ModelName.parse(name)
    if mn.host not in HF_HOSTS:
        raise InvalidRequest(
            f"'{name}' is not a Hugging Face name: expected hf.co/{{owner}}/{{repo}}[:{{quant}}]"
        )
    _, owner, last = name.split("/")
    repo = last.partition(":")[0]
    for part in (owner, repo):
        if not _REPO_PART_RE.fullmatch(part) or ".." in part or part.endswith((".", "-")):
            raise InvalidRequest(f"'{name}' does not name a Hugging Face repository (owner/repo)")
    quant = None if mn.tag == DEFAULT_TAG else mn.tag
    return HfRef(owner, repo, quant, ModelName(HF_STORE_HOST, mn.namespace, mn.model, mn.tag))


# -- the listing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HfFile:
    path: str  # the repository's name for it: used in URLs only, never as a local path
    size: int | None
    sha256: str | None  # lowercase hex, from the LFS pointer; None for files kept in git itself

    @property
    def digest(self) -> str:
        assert self.sha256 is not None
        return "sha256:" + self.sha256


@dataclass(frozen=True)
class HfListing:
    repo_id: str
    commit: str
    files: list[HfFile]
    gated: bool
    private: bool


def _safe_repo_path(path: Any) -> bool:
    if not isinstance(path, str) or not path or len(path) > 1024 or path.startswith("/") or "\\" in path:
        return False
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        return False
    return all(seg not in ("", ".", "..") for seg in path.split("/"))


def _hub_error(headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
    """(X-Error-Code, the hub's message) of an error response."""
    code = headers.get("x-error-code", "") or ""
    message = headers.get("x-error-message", "") or ""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            message = data["error"]
    except ValueError:
        if not message:
            message = body.decode("utf-8", errors="replace").strip()
    message = "".join(ch if ch.isprintable() else " " for ch in message)[:300]
    return code, message or "(no message)"


def _raise_for_hub_status(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    shown: str,
    repo_id: str,
    endpoint: str,
    token: str | None,
    what: str,
) -> None:
    """Map a hub error answer to our errors; returns for 2xx."""
    if 200 <= status < 300:
        return
    code, message = _hub_error(headers, body)
    page = f"{endpoint}/{repo_id}"
    if code == "GatedRepo" or (status in (401, 403) and "restricted" in message.lower()):
        if token:
            raise HfAccessDenied(
                f"Hugging Face repository {repo_id} is gated and the token in HF_TOKEN has no access"
                f" (HTTP {status}: {message}): accept the model's terms at {page} with that account"
            )
        raise HfAccessDenied(
            f"Hugging Face repository {repo_id} is gated (HTTP {status}: {message}): accept its terms"
            f" at {page}, then set HF_TOKEN to an access token of that account"
        )
    if code in ("RepoNotFound", "RevisionNotFound", "EntryNotFound") or status == 404:
        detail = {
            "RevisionNotFound": f"repository {repo_id} has no revision {what}",
            "EntryNotFound": f"repository {repo_id} has no file {what}",
        }.get(code, f"repository {repo_id} does not exist")
        if not token and code not in ("RevisionNotFound", "EntryNotFound"):
            detail += " (or it is private: set HF_TOKEN to a token that can read it)"
        elif token and code not in ("RevisionNotFound", "EntryNotFound"):
            detail += " (or the token in HF_TOKEN cannot read it)"
        raise HfRepoNotFound(shown, f"{detail} (HTTP {status}: {message})")
    if status in (401, 403):
        if token:
            raise HfAccessDenied(
                f"Hugging Face refused the token in HF_TOKEN for {repo_id} (HTTP {status}: {message})"
            )
        raise HfAccessDenied(
            f"Hugging Face repository {repo_id} is private or gated (HTTP {status}: {message}):"
            " set HF_TOKEN to an access token that can read it"
        )
    raise UpstreamUnavailable(f"Hugging Face ({endpoint}) answered HTTP {status} for {what}: {message}")


def _parse_listing(data: bytes, repo_id: str, label: str) -> HfListing:
    try:
        info = json.loads(data)
    except ValueError as e:
        raise UpstreamUnavailable(f"the Hugging Face listing of {label} is not JSON: {e}") from e
    if not isinstance(info, dict):
        raise UpstreamUnavailable(f"the Hugging Face listing of {label} is not a JSON object")
    commit = info.get("sha")
    if not isinstance(commit, str) or not _COMMIT_RE.fullmatch(commit):
        raise UpstreamUnavailable(f"the Hugging Face listing of {label} has no valid commit sha")
    siblings = info.get("siblings")
    if not isinstance(siblings, list):
        raise UpstreamUnavailable(f"the Hugging Face listing of {label} has no 'siblings' list")
    files: list[HfFile] = []
    for s in siblings:
        if not isinstance(s, dict):
            continue
        path = s.get("rfilename")
        if not _safe_repo_path(path):
            log.warning("ignoring file %r of %s: not a safe relative name", path, label)
            continue
        size = s.get("size")
        size = size if type(size) is int and size >= 0 else None
        sha256 = None
        lfs = s.get("lfs")
        if isinstance(lfs, dict):
            lsize, lsha = lfs.get("size"), lfs.get("sha256")
            if type(lsize) is int and lsize >= 0 and isinstance(lsha, str) and _SHA256_RE.fullmatch(lsha):
                if size is not None and size != lsize:
                    raise UpstreamUnavailable(
                        f"the Hugging Face listing of {label} gives {path} two sizes ({size} and {lsize})"
                    )
                size, sha256 = lsize, lsha.lower()
        files.append(HfFile(path, size, sha256))
    canonical = info.get("id")
    if not (isinstance(canonical, str) and canonical.lower() == repo_id.lower()):
        canonical = repo_id  # a renamed repository redirects; keep the name we asked for
    return HfListing(canonical, commit, files, bool(info.get("gated")), bool(info.get("private")))


async def _list_repo(
    http: HttpSession, endpoint: str, ref: HfRef, revision: str, token: str | None, shown: str
) -> HfListing:
    url = f"{endpoint}/api/models/{ref.owner}/{ref.repo}/revision/{quote(revision, safe='')}"
    try:
        status, headers, data = await http.get_small(
            url, params={"blobs": "true"}, headers={"Accept": "application/json"}, limit=MAX_LISTING_BYTES
        )
    except EnginehouseError:
        raise
    except Exception as e:  # download.TransientError: the network, after no retries
        raise UpstreamUnavailable(f"cannot reach Hugging Face at {endpoint}: {e}") from e
    _raise_for_hub_status(
        status, headers, data, shown=shown, repo_id=ref.repo_id, endpoint=endpoint, token=token, what=revision
    )
    if len(data) > MAX_LISTING_BYTES:
        raise UpstreamUnavailable(f"the Hugging Face listing of {shown} is larger than 32 MiB; refused")
    return _parse_listing(data, ref.repo_id, shown)


# -- choosing the GGUF ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Gguf:
    file: HfFile  # the file itself, or the first part of a split model
    stem: str  # the base name without .gguf and without the split suffix
    parts: int  # 1, or how many files a split model has

    @property
    def label(self) -> str:
        found = _QUANT_LABEL_RE.findall(self.stem)
        return found[-1] if found else self.file.path

    def shown(self) -> str:
        extra = f", split in {self.parts} files" if self.parts > 1 else ""
        return (
            f"{self.label} ({self.file.path}{extra})"
            if self.label != self.file.path
            else self.file.path + extra
        )


def _ggufs(files: list[HfFile]) -> list[_Gguf]:
    out: list[_Gguf] = []
    for f in files:
        base = f.path.rsplit("/", 1)[-1]
        if not base.lower().endswith(".gguf") or "mmproj" in base.lower():
            continue
        stem = f.path[: -len(".gguf")]
        m = _SPLIT_RE.search(stem)
        if m:
            if int(m.group(1)) != 1:
                continue  # listed once, by its first part
            out.append(_Gguf(f, stem[: m.start()], int(m.group(2))))
        else:
            out.append(_Gguf(f, stem, 1))
    out.sort(key=lambda g: (g.label.lower(), g.file.path))
    return out


def _matches(quant: str, stem: str, exact: bool) -> bool:
    q, s = quant.lower(), stem.lower()
    if exact:
        return re.search(rf"(?<![a-z0-9]){re.escape(q)}(?![a-z0-9_])", s) is not None
    return q in s


def choose_gguf(files: list[HfFile], quant: str | None, label: str) -> tuple[HfFile, str]:
    """The GGUF to pull and the tag to register it under; InvalidRequest listing the choices if
    there is no single answer."""
    ggufs = _ggufs(files)
    if not ggufs:
        raise InvalidRequest(
            f"{label} has no GGUF file to pull (only {len(files)} other files): pull a GGUF repository,"
            " or fetch this one whole for an engine that reads the Hugging Face layout"
        )
    choices = "; ".join(g.shown() for g in ggufs)
    if quant is None:
        picked = [g for g in ggufs if _matches(DEFAULT_QUANT, g.stem, exact=True)]
        if len(picked) != 1:
            picked = ggufs if len(ggufs) == 1 else []
        if not picked:
            raise InvalidRequest(
                f"{label} has several GGUF files and no single {DEFAULT_QUANT}: name one as"
                f" {label}:<quant>, one of: {choices}"
            )
    else:
        picked = [g for g in ggufs if _matches(quant, g.stem, exact=True)]
        if not picked:
            picked = [g for g in ggufs if _matches(quant, g.stem, exact=False)]
        if len(picked) > 1:
            raise InvalidRequest(
                f"quantisation '{quant}' is ambiguous in {label}: it matches "
                + "; ".join(g.shown() for g in picked)
                + f". Choose one of: {choices}"
            )
        if not picked:
            raise InvalidRequest(
                f"{label} has no GGUF file for quantisation '{quant}'; choose one of: {choices}"
            )
    g = picked[0]
    if g.parts > 1:
        raise InvalidRequest(
            f"{g.file.path} of {label} is split in {g.parts} files; split GGUFs cannot be pulled yet"
            " (merge them with llama-gguf-split --merge and import the result)"
        )
    if quant is not None:
        tag = quant
    else:
        tag = g.label if g.label != g.file.path else DEFAULT_TAG
        try:
            ModelName(HF_STORE_HOST, "x", "x", tag)
        except EnginehouseError:
            tag = DEFAULT_TAG
    return g.file, tag


# -- pulling --------------------------------------------------------------------------------------


class _HubAuth(BearerAuth):
    """Static tokens only: the hub has no token realm, and its 401s may carry a ``Bearer realm=``
    header that names no URL (answering it would only garble the real error)."""

    async def challenge(self, http: HttpSession, url: str, header: str) -> bool:
        return False


def _resolve_url(endpoint: str, repo_id: str, commit: str, path: str) -> str:
    owner, repo = repo_id.split("/")
    return f"{endpoint}/{quote(owner)}/{quote(repo)}/resolve/{commit}/{quote(path, safe='/')}"


async def _probe_access(
    http: HttpSession, url: str, *, shown: str, repo_id: str, endpoint: str, token: str | None, path: str
) -> None:
    """One byte of the file: turns a gated repository's 401/403 into a clear error before anything
    is written (the listing of a gated repository is public)."""
    try:
        resp = await http.open(url, {"Range": "bytes=0-0", "Accept-Encoding": "identity"}, body=True)
    except EnginehouseError:
        raise
    except Exception as e:  # TransientError
        raise UpstreamUnavailable(f"cannot reach Hugging Face at {endpoint}: {e}") from e
    try:
        body = b"" if resp.status < 300 else await resp.read(MAX_ERROR_BYTES)
    finally:
        await resp.aclose()
    _raise_for_hub_status(
        resp.status,
        resp.headers,
        body,
        shown=shown,
        repo_id=repo_id,
        endpoint=endpoint,
        token=token,
        what=path,
    )


def _existing(store: Store, mn: ModelName, digest: str) -> ModelRecord | None:
    try:
        rec = store.resolve(mn)
    except EnginehouseError:
        return None
    return rec if rec.model_digest == digest else None  # (tags are found case-insensitively)


def _register(store: Store, names: list[ModelName], digest: str) -> ModelRecord:
    """Manifests for the downloaded blob, as an import writes them (the blob is linked, not copied)."""
    first = _existing(store, names[0], digest)
    if first is None:
        first = store.import_gguf(store.blob_path(digest), names[0], link=True)
    for other in names[1:]:
        if _existing(store, other, digest) is None:
            store.copy(first.name, other)
    return first


async def pull_hf(
    store: Store,
    name: str,
    *,
    progress: PullProgress | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    insecure: bool = False,
    **download_kwargs: Any,
) -> ModelRecord:
    """Pull ``hf.co/{owner}/{repo}[:{quant}]`` into ``store``; returns the model as registered
    (``hf.co/{owner}/{repo}:{quant}``, the chosen quant when none was named).

    ``insecure`` allows plain http to the endpoint's host only. ``download_kwargs``: ``client``
    (httpx.AsyncClient for the listing), ``http_backend`` ("aiohttp" or "httpx"), ``stall_timeout``,
    ``part_size``, ``connections``. Errors: InvalidName, InvalidRequest (no such quant, ambiguous,
    split), HfAccessDenied (gated/private: set HF_TOKEN), HfRepoNotFound (a ModelNotFound),
    InvalidDigest, UpstreamUnavailable, StoreError.
    """
    session_kw = {k: download_kwargs.pop(k) for k in ("client", "stall_timeout") if k in download_kwargs}
    if "http_backend" in download_kwargs:
        session_kw["backend"] = download_kwargs.pop("http_backend")
    blob_kw = {k: download_kwargs.pop(k) for k in ("part_size", "connections") if k in download_kwargs}
    if download_kwargs:
        raise TypeError(f"pull_hf() got unexpected keyword arguments: {', '.join(sorted(download_kwargs))}")

    ref = parse_hf_name(name)
    ep = hf_endpoint(endpoint)
    tok = hf_token(token)
    rev = revision or DEFAULT_REVISION
    label = f"{HF_STORE_HOST}/{ref.repo_id}"
    shown = ref.name.display

    async def emit(event: dict[str, Any]) -> None:
        if progress is not None:
            r = progress(event)
            if inspect.isawaitable(r):
                await r

    await emit({"status": "pulling manifest"})
    origin_host = (urlsplit(ep).hostname or "").lower()
    auth = _HubAuth({ep: tok} if tok else None)
    async with HttpSession(
        auth=auth, allow_http_hosts={origin_host} if insecure else set(), **session_kw
    ) as http:
        listing = await _list_repo(http, ep, ref, rev, tok, shown)
        if listing.gated and not tok:
            raise HfAccessDenied(
                f"Hugging Face repository {listing.repo_id} is gated: accept its terms at"
                f" {ep}/{listing.repo_id}, then set HF_TOKEN to an access token of that account"
            )
        file, tag = choose_gguf(listing.files, ref.quant, label)
        if file.sha256 is None or file.size is None:
            raise UpstreamUnavailable(
                f"Hugging Face gives no sha256 for {file.path} of {listing.repo_id} (not an LFS file):"
                " refusing to pull bytes that cannot be verified"
            )
        digest, size = file.digest, file.size
        mn = ModelName(HF_STORE_HOST, ref.name.namespace, ref.name.model, tag)
        names = [mn] if ref.name.tag == tag else [mn, ref.name]
        status = f"pulling {file.sha256[:12]}"

        async def report(completed: int, total: int) -> None:
            await emit({"status": status, "digest": digest, "total": total, "completed": completed})

        if not store.has_blob(digest):
            url = _resolve_url(ep, listing.repo_id, listing.commit, file.path)
            check_free_space(store, pending_bytes(store, digest, size))
            if listing.gated or listing.private:
                await _probe_access(
                    http, url, shown=shown, repo_id=listing.repo_id, endpoint=ep, token=tok, path=file.path
                )
            await download_blob(store, digest, size, url, http, progress=report, **blob_kw)
        else:
            await report(size, size)

    await emit({"status": "verifying sha256 digest"})
    if not store.has_blob(digest):
        raise StoreError(f"blob {digest} of {shown} vanished from the store during the pull")
    await emit({"status": "writing manifest"})
    record = await asyncio.to_thread(_register, store, names, digest)
    await emit({"status": "success"})
    return record


# -- whole repositories ---------------------------------------------------------------------------


def _split_repo_id(repo_id: str) -> tuple[str, str]:
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(
        _REPO_PART_RE.fullmatch(p) and ".." not in p and not p.endswith((".", "-")) for p in parts
    ):
        raise InvalidRequest(f"invalid Hugging Face repository id {repo_id!r}: expected owner/repo")
    return parts[0], parts[1]


def _git_blob_sha1(path: Path, size: int) -> str:
    h = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def _map_hub_exception(
    e: Exception, repo_id: str, endpoint: str, token: str | None, revision: str
) -> Exception:
    from huggingface_hub import errors as hf_errors

    shown = f"{HF_STORE_HOST}/{repo_id}"
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(e, hf_errors.HfHubHTTPError) and isinstance(status, int):
        headers = getattr(response, "headers", {}) or {}
        try:
            body = response.content  # type: ignore[union-attr]
        except Exception:
            body = b""
        try:
            _raise_for_hub_status(
                status,
                headers,
                body,
                shown=shown,
                repo_id=repo_id,
                endpoint=endpoint,
                token=token,
                what=revision,
            )
        except EnginehouseError as mapped:
            return mapped
    if isinstance(e, hf_errors.GatedRepoError):
        return HfAccessDenied(f"Hugging Face repository {repo_id} is gated: set HF_TOKEN ({e})")
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return HfRepoNotFound(shown, f"repository {repo_id} has no revision {revision}")
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        hint = "" if token else " (or it is private: set HF_TOKEN)"
        return HfRepoNotFound(shown, f"repository {repo_id} does not exist{hint}")
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UpstreamUnavailable(f"downloading {repo_id} from Hugging Face ({endpoint}) failed: {first_line}")


def _download_repo_sync(
    endpoint: str,
    repo_id: str,
    dest_dir: Path,
    revision: str | None,
    token: str | None,
    allow_patterns: list[str] | str | None,
) -> Path:
    from huggingface_hub import HfApi, get_cached_repo_tree, snapshot_download
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Quiet(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    owner, repo = _split_repo_id(repo_id)
    rev = revision or DEFAULT_REVISION
    api = HfApi(endpoint=endpoint, token=token or False)
    try:
        info = api.model_info(repo_id, revision=rev)
    except Exception as e:
        raise _map_hub_exception(e, repo_id, endpoint, token, rev) from e
    commit = info.sha
    if not isinstance(commit, str) or not _COMMIT_RE.fullmatch(commit):
        raise UpstreamUnavailable(f"Hugging Face gave no valid commit for {repo_id} at {rev}")
    if isinstance(info.id, str) and info.id.lower() == repo_id.lower():
        owner, repo = _split_repo_id(info.id)
    if info.gated and not token:
        raise HfAccessDenied(
            f"Hugging Face repository {owner}/{repo} is gated: accept its terms at {endpoint}/{owner}/{repo},"
            " then set HF_TOKEN to an access token of that account"
        )
    target = Path(dest_dir) / owner / repo / commit
    target.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(
            f"{owner}/{repo}",
            revision=commit,
            endpoint=endpoint,
            token=token or False,
            local_dir=target,
            cache_dir=Path(dest_dir) / ".cache",
            allow_patterns=allow_patterns,
            tqdm_class=Quiet,
        )
        tree = get_cached_repo_tree(f"{owner}/{repo}", revision=commit, local_dir=target)
    except Exception as e:
        raise _map_hub_exception(e, f"{owner}/{repo}", endpoint, token, rev) from e
    # Verify what arrived against the listing: sha256 for LFS files, the git blob id for the rest.
    by_path = {f.path: f for f in tree}
    root = target.resolve()
    for path in filter_repo_objects(list(by_path), allow_patterns=allow_patterns):
        entry = by_path[path]
        local = (target / path).resolve()
        if not local.is_relative_to(root) or not local.is_file():
            raise StoreError(f"{path} of {owner}/{repo} is missing from {target} after the download")
        size = local.stat().st_size
        if entry.lfs is not None:
            ok = size == entry.lfs.size and _sha256_file(local) == entry.lfs.sha256.lower()
        else:
            ok = size == entry.size and _git_blob_sha1(local, size) == entry.blob_id
        if not ok:
            with contextlib.suppress(OSError):
                local.unlink()
            raise StoreError(
                f"{path} of {owner}/{repo} does not match the hub's checksum; it was deleted (download again)"
            )
    return target


async def download_hf_repo(
    endpoint: str | None,
    repo_id: str,
    dest_dir: Path | str,
    *,
    revision: str | None = None,
    token: str | None = None,
    allow_patterns: list[str] | str | None = None,
) -> Path:
    """Download repository ``owner/repo`` at ``revision`` (default main) into
    ``dest_dir/{owner}/{repo}/{commit}`` (use :func:`hf_repo_root` of the store for ``dest_dir``)
    with ``huggingface_hub.snapshot_download``; every file is checked against the hub's checksums.
    Returns that directory. Endpoint and token default as in :func:`pull_hf`. Needs the
    huggingface_hub package. Errors: HfAccessDenied, HfRepoNotFound, UpstreamUnavailable, StoreError.
    """
    ep = hf_endpoint(endpoint)
    tok = hf_token(token)
    _split_repo_id(repo_id)
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as e:
        raise StoreError(
            "downloading a whole Hugging Face repository needs the huggingface_hub package"
        ) from e
    return await asyncio.to_thread(
        _download_repo_sync, ep, repo_id, Path(dest_dir), revision, tok, allow_patterns
    )
