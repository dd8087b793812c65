"""Hugging Face: GGUF models pulled under the names Ollama users already type
(``hf.co/{owner}/{repo}[:{quant}]``), and whole repositories for engines that read the Hugging Face
layout.

- :mod:`~enginehouse.store.hf.names`: parsing ``hf.co``/``huggingface.co`` names;
- :mod:`~enginehouse.store.hf.hub`: endpoint and token, the repository listing, the hub's errors
  mapped to ours (:class:`HfAccessDenied`, :class:`HfRepoNotFound`), the auth for downloads;
- :mod:`~enginehouse.store.hf.choose`: which GGUF (quantisation) of a repository to pull;
- :mod:`~enginehouse.store.hf.pull`: :func:`pull_hf`, list, choose, download, register;
- :mod:`~enginehouse.store.hf.snapshot`: :func:`download_hf_repo`, a whole repository via
  ``huggingface_hub.snapshot_download``, verified against the hub's checksums.
"""

from __future__ import annotations

from enginehouse.store.hf.choose import DEFAULT_QUANT, choose_gguf
from enginehouse.store.hf.hub import (
    DEFAULT_ENDPOINT,
    HfAccessDenied,
    HfFile,
    HfRepoNotFound,
    hf_endpoint,
    hf_token,
)
from enginehouse.store.hf.names import HF_HOSTS, parse_hf_name
from enginehouse.store.hf.pull import pull_hf
from enginehouse.store.hf.snapshot import download_hf_repo, hf_repo_root

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
