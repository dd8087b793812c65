"""Pushing to an Ollama-protocol registry: the fake one (tests/fakes/registry.py with
tests/fakes/registry_uploads.py) on loopback, behind a token realm; what is pushed is pulled back."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enginehouse.errors import InvalidName, InvalidRequest, ModelNotFound, UpstreamUnavailable
from enginehouse.store import Store
from enginehouse.store import download as dl
from enginehouse.store.create import create_model
from enginehouse.store.download.resume import partial_dir
from enginehouse.store.modelfile import parse
from enginehouse.store.pull_ollama import pull_ollama
from enginehouse.store.push_ollama import NEEDS_REGISTRY_NAME, PushReport, push_ollama, pushable_name
from tests.fakes.registry import FakeRegistry


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[FakeRegistry]:
    with FakeRegistry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl.tuning, "BACKOFF_BASE", 0.05)


@pytest.fixture
def store(tmp_path: Path, bundled_gguf: Path) -> Store:
    """A store with a created model (GGUF, system, parameters) under a name on the fake registry."""
    s = Store(tmp_path / "store")
    text = f"FROM {bundled_gguf}\nSYSTEM You are terse.\nPARAMETER temperature 0.2\n"
    create_model(s, "tiny:v1", parse(text))
    return s


def push(store: Store, name: str, **kw: Any) -> PushReport:
    kw.setdefault("insecure", True)
    return asyncio.run(push_ollama(store, name, **kw))


def blob_sizes(store: Store, name: str) -> dict[str, int]:
    m = store.read_manifest(name)
    return {e["digest"]: e["size"] for e in [*m["layers"], m["config"]]}


def test_push_then_pull_back_gives_the_same_digests(
    registry: FakeRegistry, store: Store, tmp_path: Path
) -> None:
    name = registry.name("you", "tiny", "v1")
    store.copy("tiny:v1", name)
    events: list[dict[str, Any]] = []
    report = push(store, name, progress=events.append, chunk_size=16 << 20)
    sizes = blob_sizes(store, name)
    assert sorted(report.uploaded) == sorted(sizes) and report.skipped == []
    assert report.bytes_sent == registry.stats.upload_bytes == sum(sizes.values())
    assert registry.stats.upload_requests["PATCH"] >= 6  # the GGUF went up in 16 MiB chunks
    assert registry.stats.token_requests >= 2  # a pull token for HEAD, then a push token for writes

    statuses = [e["status"] for e in events]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    started = [e for e in events if e["status"] == "starting upload"]
    assert {e["digest"] for e in started} == set(sizes)
    assert all(set(e) == {"status", "digest", "total"} and e["total"] == sizes[e["digest"]] for e in started)
    pushing = [e for e in events if e["status"].startswith("pushing ") and "digest" in e]
    for e in pushing:
        assert set(e) == {"status", "digest", "total", "completed"}
        assert e["status"] == "pushing " + e["digest"].removeprefix("sha256:")[:12]
    for digest, size in sizes.items():
        completed = [e["completed"] for e in pushing if e["digest"] == digest]
        assert completed == sorted(completed) and completed[-1] == size
    assert len([e for e in pushing if e["total"] > 90_000_000]) > 3  # the big blob reports as it goes

    fresh = Store(tmp_path / "fresh")
    rec = asyncio.run(pull_ollama(fresh, name, insecure=True))
    _, pushed = store.manifest_bytes(name)
    _, pulled = fresh.manifest_bytes(name)
    assert pulled == pushed and rec.manifest_digest == report.manifest_digest
    assert blob_sizes(fresh, name) == sizes
    for digest in sizes:
        assert fresh.blob_path(digest).read_bytes() == store.blob_path(digest).read_bytes()
    assert rec.system == "You are terse." and rec.params == {"temperature": 0.2}


def test_a_second_push_skips_every_blob_the_registry_has(registry: FakeRegistry, store: Store) -> None:
    name = registry.name("you", "tiny", "v1")
    store.copy("tiny:v1", name)
    push(store, name)
    registry.reset_stats()
    events: list[dict[str, Any]] = []
    report = push(store, name, progress=events.append)
    sizes = blob_sizes(store, name)
    assert report.uploaded == [] and sorted(report.skipped) == sorted(sizes) and report.bytes_sent == 0
    assert registry.stats.upload_bytes == 0 and not registry.stats.upload_requests
    assert registry.stats.blob_heads == len(sizes) + 1  # one more: the first HEAD met the challenge
    assert "starting upload" not in [e["status"] for e in events]
    done = [e for e in events if "digest" in e]
    assert sorted((e["digest"], e["completed"]) for e in done) == sorted(sizes.items())
    assert registry.stats.manifest_puts == 2  # a pull token first, then the push token's


def test_a_dropped_connection_resumes_from_the_registrys_range(registry: FakeRegistry, store: Store) -> None:
    name = registry.name("you", "tiny", "v1")
    store.copy("tiny:v1", name)
    registry.uploads.drop_upload_after = 5 << 20  # mid-chunk of the GGUF, once
    events: list[dict[str, Any]] = []
    report = push(store, name, progress=events.append, chunk_size=16 << 20)
    sizes = blob_sizes(store, name)
    # nothing was sent twice: the retry asked the registry what it held and went on from there
    assert registry.stats.upload_bytes == sum(sizes.values())
    assert report.bytes_sent >= sum(sizes.values())  # (counts what left this side, the lost bytes too)
    assert registry.stats.upload_requests["GET"] >= 1
    assert registry.manifests[("you", "tiny", "v1")] == store.manifest_bytes(name)[1]
    assert not list(partial_dir(store).glob("push-*.json"))  # finished sessions leave no record


def test_a_registry_that_stops_reading_is_left_and_the_upload_resumed(
    registry: FakeRegistry, store: Store
) -> None:
    name = registry.name("you", "tiny", "v1")
    store.copy("tiny:v1", name)
    registry.uploads.stall_upload_at = (3 << 20, 5.0)
    t0 = time.monotonic()
    push(store, name, chunk_size=32 << 20, stall_timeout=1.0)
    assert time.monotonic() - t0 < 4.5  # left after about a second, not after the registry's 5 s
    assert registry.stats.upload_bytes == sum(blob_sizes(store, name).values())
    assert registry.manifests[("you", "tiny", "v1")] == store.manifest_bytes(name)[1]


def test_an_interrupted_push_resumes_its_session_next_time(
    registry: FakeRegistry, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = registry.name("you", "tiny", "v1")
    store.copy("tiny:v1", name)
    monkeypatch.setattr(dl.tuning, "RETRIES", 0)  # the first failure ends the push
    registry.uploads.drop_upload_after = 40 << 20
    with pytest.raises(UpstreamUnavailable, match="next push resumes"):
        push(store, name, chunk_size=16 << 20)
    assert len(list(partial_dir(store).glob("push-*.json"))) == 1  # the session of the GGUF
    held = registry.stats.upload_bytes
    assert 40 << 20 <= held < 48 << 20
    report = push(store, name, chunk_size=16 << 20)
    sizes = blob_sizes(store, name)
    assert registry.stats.upload_bytes == sum(sizes.values())  # the rest only, from where it stopped
    # no second session for the GGUF (the one POST more met the push scope's challenge)
    assert registry.stats.upload_requests["POST"] == len(sizes) + 1
    assert sorted(report.uploaded) == sorted(sizes)
    assert not list(partial_dir(store).glob("push-*.json"))


def test_a_forgotten_session_starts_over(
    registry: FakeRegistry, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = registry.name("you", "tiny", "v1")
    store.copy("tiny:v1", name)
    monkeypatch.setattr(dl.tuning, "RETRIES", 0)
    registry.uploads.drop_upload_after = 20 << 20
    with pytest.raises(UpstreamUnavailable):
        push(store, name, chunk_size=16 << 20)
    registry.uploads.sessions.clear()  # the registry expired it
    push(store, name, chunk_size=16 << 20)
    assert registry.manifests[("you", "tiny", "v1")] == store.manifest_bytes(name)[1]


def test_auth_is_required_and_answered(registry: FakeRegistry, store: Store) -> None:
    name = registry.name("you", "tiny", "v1")
    store.copy("tiny:v1", name)
    push(store, name)
    assert registry.stats.unauthorized >= 2 and registry.stats.token_requests >= 2
    assert registry.push_tokens
    registry.tokens.clear()
    registry.push_tokens.clear()
    push(store, name)  # fresh tokens again, through the challenge
    assert registry.push_tokens


def test_a_refused_token_is_a_clear_error(registry: FakeRegistry, store: Store) -> None:
    name = registry.name("you", "tiny", "v1")
    store.copy("tiny:v1", name)
    registry.push_tokens = _NeverHolds()  # the realm hands out tokens that cannot push
    with pytest.raises(
        UpstreamUnavailable, match=r"refused to start an upload \(HTTP 401\): authentication required"
    ):
        push(store, name)


class _NeverHolds(set[str]):
    def add(self, item: str) -> None:
        pass


@pytest.mark.parametrize(
    "name", ["tiny", "tiny:v1", "library/tiny:v1", "registry.ollama.ai/library/tiny", "hf.co/you/tiny:Q4_K_M"]
)
def test_a_name_without_a_registry_is_refused(name: str, store: Store) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(NEEDS_REGISTRY_NAME)):
        push(store, name)


def test_pushable_names() -> None:
    assert pushable_name("you/tiny").full == "registry.ollama.ai/you/tiny:latest"
    assert pushable_name("reg.example:5000/library/tiny:v1").host == "reg.example:5000"
    with pytest.raises(InvalidName):
        pushable_name("a/b/c/d")


def test_an_unknown_model_is_not_found(registry: FakeRegistry, store: Store) -> None:
    with pytest.raises(ModelNotFound):
        push(store, registry.name("you", "nope", "v1"))
    assert registry.stats.blob_heads == 0


def test_https_is_required_unless_insecure(registry: FakeRegistry, store: Store) -> None:
    name = registry.name("you", "tiny", "v1")
    store.copy("tiny:v1", name)
    with pytest.raises(UpstreamUnavailable) as err:
        push(store, name, insecure=False)
    assert "TLS" in err.value.message or "reach" in err.value.message
    assert json.dumps(err.value.message)  # plain words, no exception repr
