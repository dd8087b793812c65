"""Resumable, parallel-range, verified blob downloads into the store (generic: any HTTP source).

- :mod:`~enginehouse.store.download.blob`: :func:`download_blob`, one blob as parallel ranges,
  hashed while it arrives and committed into the store only when its sha256 matches;
- :mod:`~enginehouse.store.download.resume`: the partial file, its resume record, the boot id and
  the per-blob lock;
- :mod:`~enginehouse.store.download.hashing`: the thread that hashes the arrived prefix;
- :mod:`~enginehouse.store.download.space`: bytes still to fetch and the free-space check;
- :mod:`~enginehouse.store.download.http`: :class:`HttpSession` (manual redirects, plain-http
  rules, stall timeouts; one aiohttp session from :mod:`enginehouse.http_client`);
- :mod:`~enginehouse.store.download.auth`: :class:`BearerAuth` (tokens bound to origins, token
  realms) and registry error bodies in plain words;
- :mod:`~enginehouse.store.download.tuning`: retry, back-off, interval and size tunables.

Tunables live in :mod:`tuning` and are read from there at each use, so setting
``download.tuning.RETRIES`` (or monkeypatching it) takes effect everywhere.
"""

from __future__ import annotations

from enginehouse.store.download import tuning
from enginehouse.store.download.auth import BearerAuth, error_text, origin
from enginehouse.store.download.blob import ProgressFn, download_blob, run_all
from enginehouse.store.download.http import USER_AGENT, HttpSession, Response, TransientError
from enginehouse.store.download.resume import boot_id, partial_dir
from enginehouse.store.download.space import check_free_space, pending_bytes

__all__ = [
    "USER_AGENT",
    "BearerAuth",
    "HttpSession",
    "ProgressFn",
    "Response",
    "TransientError",
    "boot_id",
    "check_free_space",
    "download_blob",
    "error_text",
    "origin",
    "partial_dir",
    "pending_bytes",
    "run_all",
    "tuning",
]
