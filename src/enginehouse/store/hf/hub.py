"""Talking to the Hugging Face hub: endpoint and token, the repository listing, the hub's error
answers mapped to ours, and the access probe and auth used for downloads.

The listing at a revision (default ``main``)::

    GET {endpoint}/api/models/{owner}/{repo}/revision/{revision}?blobs=true
    -> {"id", "sha": <commit>, "gated", "siblings": [{"rfilename", "size", "lfs": {"sha256", "size"}}]}

(what ``HfApi.model_info(files_metadata=True)`` sends). The endpoint is the ``endpoint`` argument,
else ``HF_ENDPOINT``, else https://huggingface.co; the token is the ``token`` argument, else
``HF_TOKEN``, and it is bound to the endpoint's origin only.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from enginehouse.errors import EnginehouseError, InvalidRequest, ModelNotFound, UpstreamUnavailable
from enginehouse.store.download import BearerAuth, HttpSession
from enginehouse.store.hf.names import HfRef

log = logging.getLogger(__name__)

__all__ = [
    "COMMIT_RE",
    "DEFAULT_ENDPOINT",
    "DEFAULT_REVISION",
    "MAX_ERROR_BYTES",
    "MAX_LISTING_BYTES",
    "HfAccessDenied",
    "HfFile",
    "HfListing",
    "HfRepoNotFound",
    "HubAuth",
    "hf_endpoint",
    "hf_token",
    "list_repo",
    "probe_access",
    "raise_for_hub_status",
    "resolve_url",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
MAX_LISTING_BYTES = 32 << 20  # a listing of a repository with thousands of files is a few MB
MAX_ERROR_BYTES = 64 << 10

COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


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


def raise_for_hub_status(
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
    if not isinstance(commit, str) or not COMMIT_RE.fullmatch(commit):
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


async def list_repo(
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
    raise_for_hub_status(
        status, headers, data, shown=shown, repo_id=ref.repo_id, endpoint=endpoint, token=token, what=revision
    )
    if len(data) > MAX_LISTING_BYTES:
        raise UpstreamUnavailable(f"the Hugging Face listing of {shown} is larger than 32 MiB; refused")
    return _parse_listing(data, ref.repo_id, shown)


# -- downloads ------------------------------------------------------------------------------------


class HubAuth(BearerAuth):
    """Static tokens only: the hub has no token realm, and its 401s may carry a ``Bearer realm=``
    header that names no URL (answering it would only garble the real error)."""

    async def challenge(self, http: HttpSession, url: str, header: str) -> bool:
        return False


def resolve_url(endpoint: str, repo_id: str, commit: str, path: str) -> str:
    owner, repo = repo_id.split("/")
    return f"{endpoint}/{quote(owner)}/{quote(repo)}/resolve/{commit}/{quote(path, safe='/')}"


async def probe_access(
    http: HttpSession, url: str, *, shown: str, repo_id: str, endpoint: str, token: str | None, path: str
) -> None:
    """One byte of the file: turns a gated repository's 401/403 into a clear error before anything
    is written (the listing of a gated repository is public)."""
    try:
        resp = await http.open(url, {"Range": "bytes=0-0", "Accept-Encoding": "identity"})
    except EnginehouseError:
        raise
    except Exception as e:  # TransientError
        raise UpstreamUnavailable(f"cannot reach Hugging Face at {endpoint}: {e}") from e
    try:
        body = b"" if resp.status < 300 else await resp.read(MAX_ERROR_BYTES)
    finally:
        await resp.aclose()
    raise_for_hub_status(
        resp.status,
        resp.headers,
        body,
        shown=shown,
        repo_id=repo_id,
        endpoint=endpoint,
        token=token,
        what=path,
    )
