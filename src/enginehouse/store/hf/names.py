"""Hugging Face model names: ``hf.co/{owner}/{repo}[:{quant}]`` (also ``huggingface.co/...``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from enginehouse.errors import InvalidRequest
from enginehouse.store.names import DEFAULT_TAG, ModelName

__all__ = ["HF_HOSTS", "HF_STORE_HOST", "REPO_PART_RE", "HfRef", "parse_hf_name"]

HF_HOSTS = frozenset({"hf.co", "huggingface.co"})
HF_STORE_HOST = "hf.co"

REPO_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


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
        if not REPO_PART_RE.fullmatch(part) or ".." in part or part.endswith((".", "-")):
            raise InvalidRequest(f"'{name}' does not name a Hugging Face repository (owner/repo)")
    quant = None if mn.tag == DEFAULT_TAG else mn.tag
    return HfRef(owner, repo, quant, ModelName(HF_STORE_HOST, mn.namespace, mn.model, mn.tag))
