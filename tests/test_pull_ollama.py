"""Pulling from an Ollama-protocol registry: a fake one (tests/fakes/registry.py) on loopback that
serves the bundled GGUF behind a token realm and a CDN redirect, with fault switches."""

from __future__ import annotations

import asyncio
import filecmp
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enginehouse.errors import InvalidDigest, ModelNotFound, StoreError, UpstreamUnavailable
from enginehouse.store import Store
from enginehouse.store import download as dl
from enginehouse.store.pull_ollama import RegistryModelNotFound, manifest_url, pull_ollama
from tests.fakes.registry import FakeRegistry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gguf(bundled_gguf: Path) -> Path:
    return bundled_gguf


@pytest.fixture
def registry(tmp_path: Path, gguf: Path) -> Iterator[FakeRegistry]:
    with FakeRegistry(tmp_path / "registry") as reg:
        reg.add_model("library", "tiny", "latest", gguf, params={"temperature": 0})
        yield reg


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl.tuning, "BACKOFF_BASE", 0.05)


def pull(store: Store, name: str, **kw: Any) -> Any:
    kw.setdefault("insecure", True)
    return asyncio.run(pull_ollama(store, name, **kw))


def big_digest(reg: FakeRegistry) -> tuple[str, int]:
    manifest = json.loads(reg.manifests[("library", "tiny", "latest")])
    layer = manifest["layers"][0]
    return layer["digest"], layer["size"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def assert_store_consistent(store: Store) -> None:
    """Every blob hashes to its name; no manifest was written."""
    if store.blobs_dir.exists():
        for p in store.blobs_dir.iterdir():
            assert sha256_file(p) == p.name.replace("-", ":", 1), p
    assert not store.manifests_dir.exists() or not any(p.is_file() for p in store.manifests_dir.rglob("*"))


def recorded_done(store: Store, digest: str) -> int:
    state = dl.partial_dir(store) / (digest.replace(":", "-") + ".json")
    return sum(done for _, _, done in json.loads(state.read_bytes())["parts"])


def check_progress(events: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    sizes = {x["digest"]: x["size"] for x in [*manifest["layers"], manifest["config"]]}
    seen: dict[str, list[int]] = {}
    for e in events[1:-3]:
        assert set(e) == {"status", "digest", "total", "completed"}
        assert e["status"] == "pulling " + e["digest"].removeprefix("sha256:")[:12]
        assert e["total"] == sizes[e["digest"]]
        seen.setdefault(e["digest"], []).append(e["completed"])
    assert set(seen) == set(sizes)
    for digest, completed in seen.items():
        assert completed == sorted(completed) and completed[-1] == sizes[digest]


def test_manifest_url_defaults_to_the_ollama_registry_over_https() -> None:
    assert manifest_url("tiny") == "https://registry.ollama.ai/v2/library/tiny/manifests/latest"
    assert manifest_url("ns/m:Q4_K_M") == "https://registry.ollama.ai/v2/ns/m/manifests/Q4_K_M"
    assert manifest_url("h:5000/ns/m:t", insecure=True) == "http://h:5000/v2/ns/m/manifests/t"


def test_pull_resolves_verbatim_via_realm_and_cdn_with_ranges(
    registry: FakeRegistry, store: Store, gguf: Path
) -> None:
    events: list[dict[str, Any]] = []
    name = registry.name("library", "tiny", "latest")
    t0 = time.monotonic()
    rec = pull(store, name, progress=events.append)
    elapsed = time.monotonic() - t0
    assert rec.name.display == name
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    assert rec.params == {"temperature": 0}
    manifest_bytes = registry.manifests[("library", "tiny", "latest")]
    assert store.find_manifest(rec.name).read_bytes() == manifest_bytes  # the registry's bytes
    digest, _ = big_digest(registry)
    assert registry.stats.range_requests[digest] >= 2  # split into parallel ranges
    assert registry.stats.unauthorized >= 1 and registry.stats.token_requests >= 1  # the realm was used
    assert registry.stats.cdn_headers, "blobs were not fetched from the CDN"
    assert all("authorization" not in {k.lower() for k in h} for h in registry.stats.cdn_headers)
    assert any("Authorization" in h for h in registry.stats.registry_headers)  # the token was used there
    check_progress(events, json.loads(manifest_bytes))
    big = [e for e in events if e.get("digest") == digest]
    assert len(big) <= elapsed / dl.tuning.PROGRESS_INTERVAL + 3  # throttled
    assert not list(dl.partial_dir(store).iterdir())  # nothing left behind

    registry.reset_stats()  # a second pull costs a manifest check only
    events.clear()
    again = pull(store, name, progress=events.append)
    assert again.model_digest == rec.model_digest
    assert registry.stats.blob_requests == 0 and not registry.stats.bytes_sent
    assert registry.stats.manifest_requests == 1
    check_progress(events, json.loads(manifest_bytes))


def test_pull_namespace_model_tag_form(registry: FakeRegistry, store: Store, gguf: Path) -> None:
    registry.add_model("someone", "other", "Q4_K_M", gguf, template=None)
    name = registry.name("someone", "other", "Q4_K_M")
    rec = pull(store, name, part_size=32 << 20)
    assert (rec.name.namespace, rec.name.model, rec.name.tag) == ("someone", "other", "Q4_K_M")
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    digest, _ = big_digest(registry)
    assert registry.stats.range_requests[digest] >= 3
    assert all("authorization" not in {k.lower() for k in h} for h in registry.stats.cdn_headers)


def test_dropped_connection_resumes_where_it_stopped(
    registry: FakeRegistry, store: Store, gguf: Path
) -> None:
    digest, size = big_digest(registry)
    registry.drop_after[digest] = 20 << 20
    rec = pull(store, registry.name("library", "tiny", "latest"))
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    assert registry.stats.range_requests[digest] >= 3  # two parts and the retry
    assert registry.stats.bytes_sent[digest] <= size * 1.05


def test_failed_pull_resumes_on_the_next_one(
    registry: FakeRegistry, store: Store, gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dl.tuning, "RETRIES", 0)
    digest, size = big_digest(registry)
    registry.fail_after[digest] = 40 << 20  # then every response for it breaks off, 503 after
    name = registry.name("library", "tiny", "latest")
    with pytest.raises(UpstreamUnavailable, match="resumes"):
        pull(store, name)
    assert_store_consistent(store)
    done = recorded_done(store, digest)
    assert done >= 20 << 20
    registry.outage.clear()
    registry.reset_stats()
    rec = pull(store, name)
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    assert registry.stats.bytes_sent[digest] <= size - done + size * 0.05


def test_pull_stopped_by_its_progress_consumer_resumes(
    registry: FakeRegistry, store: Store, gguf: Path
) -> None:
    digest, size = big_digest(registry)
    registry.rate = 100e6  # slow enough for the consumer to stop it mid-blob

    class ClientGone(Exception):
        pass

    async def consumer(event: dict[str, Any]) -> None:
        if event.get("digest") == digest and event["completed"] >= 30 << 20:
            raise ClientGone

    name = registry.name("library", "tiny", "latest")
    with pytest.raises(ClientGone):
        pull(store, name, progress=consumer)
    assert_store_consistent(store)
    done = recorded_done(store, digest)
    assert done >= 30 << 20
    registry.rate = None
    registry.reset_stats()
    rec = pull(store, name)
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    assert registry.stats.bytes_sent[digest] == size - done


def test_stalled_download_is_retried_from_where_it_stopped(
    registry: FakeRegistry, store: Store, gguf: Path
) -> None:
    digest, size = big_digest(registry)
    registry.stall[digest] = [8 << 20, 4.0, 1]
    t0 = time.monotonic()
    rec = pull(store, registry.name("library", "tiny", "latest"), stall_timeout=0.5)
    assert time.monotonic() - t0 < 3.5  # did not sit out the stall
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    assert registry.stats.bytes_sent[digest] <= size * 1.05


def test_download_that_keeps_stalling_fails_clearly(
    registry: FakeRegistry, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dl.tuning, "RETRIES", 2)
    digest, _ = big_digest(registry)
    registry.stall[digest] = [0, 3.0, 10]
    with pytest.raises(UpstreamUnavailable, match=r"no data from .* for 0.3s") as exc:
        pull(store, registry.name("library", "tiny", "latest"), stall_timeout=0.3)
    assert digest in exc.value.message and "2 retries" in exc.value.message
    assert_store_consistent(store)


def test_corrupt_blob_is_refused(registry: FakeRegistry, store: Store) -> None:
    digest, _ = big_digest(registry)
    registry.corrupt.add(digest)
    with pytest.raises(InvalidDigest, match=digest):
        pull(store, registry.name("library", "tiny", "latest"))
    assert not store.has_blob(digest)
    assert_store_consistent(store)
    assert not list(dl.partial_dir(store).glob(digest.replace(":", "-") + "*"))  # partial data deleted


def test_unknown_tag_shows_the_registry_message_and_local_names(
    registry: FakeRegistry, store: Store, gguf: Path
) -> None:
    store.import_gguf(gguf, registry.name("library", "tiny", "latest"))
    missing = registry.name("library", "tiny", "nosuch")
    with pytest.raises(ModelNotFound) as exc:
        pull(store, missing)
    assert isinstance(exc.value, RegistryModelNotFound) and exc.value.status == 404
    assert "manifest unknown (MANIFEST_UNKNOWN)" in exc.value.message
    assert registry.name("library", "tiny", "latest") in exc.value.suggestions
    assert registry.name("library", "tiny", "latest") in exc.value.message
    assert registry.stats.blob_requests == 0


@pytest.mark.parametrize("fault", ["bad-digest", "path-digest", "oversized"])
def test_bad_manifest_is_refused_before_any_blob_request(
    registry: FakeRegistry, store: Store, fault: str
) -> None:
    manifest = json.loads(registry.manifests[("library", "tiny", "latest")])
    if fault == "bad-digest":
        manifest["layers"][1]["digest"] = "sha256:1234"
        expected: type[Exception] = InvalidDigest
    elif fault == "path-digest":
        manifest["config"]["digest"] = "sha256:../../../../etc/passwd"
        expected = InvalidDigest
    else:
        manifest["padding"] = "x" * (4 << 20)
        expected = UpstreamUnavailable
    registry.set_manifest("library", "tiny", "bad", json.dumps(manifest).encode())
    with pytest.raises(expected):
        pull(store, registry.name("library", "tiny", "bad"))
    assert registry.stats.manifest_requests == 1 and registry.stats.blob_requests == 0
    assert not store.blobs_dir.exists() or not any(store.blobs_dir.iterdir())
    assert_store_consistent(store)


def test_too_little_disk_space_is_refused_before_the_first_byte(
    registry: FakeRegistry, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 40, (1 << 40) - (50 << 20), 50 << 20))
    with pytest.raises(StoreError, match=r"needs 93\.\d MiB .* only 50\.0 MiB is free"):
        pull(store, registry.name("library", "tiny", "latest"))
    assert registry.stats.blob_requests == 0 and not registry.stats.bytes_sent


def test_plain_http_only_when_insecure(registry: FakeRegistry, store: Store) -> None:
    name = registry.name("library", "tiny", "latest")
    with pytest.raises(
        UpstreamUnavailable, match=r"TLS failure talking to https://127\.0\.0\.1.*insecure=True"
    ):
        pull(store, name, insecure=False)
    assert registry.stats.manifest_requests == 0 and registry.stats.blob_requests == 0
    # insecure is for the name's own host only: a redirect to plain http elsewhere is refused.
    registry.cdn_hostname = "localhost"
    with pytest.raises(UpstreamUnavailable, match="refusing plain-http URL http://localhost"):
        pull(store, name, insecure=True)
    assert not registry.stats.cdn_headers


def test_server_without_range_support(tmp_path: Path, store: Store, gguf: Path) -> None:
    with FakeRegistry(tmp_path / "registry", ranges=False, cdn=False) as reg:
        reg.add_model("library", "tiny", "latest", gguf)
        rec = pull(store, reg.name("library", "tiny", "latest"), part_size=16 << 20)
        assert filecmp.cmp(rec.model_path, gguf, shallow=False)
        assert not reg.stats.range_requests


CHILD = """
import asyncio, sys
from enginehouse.store import Store
from enginehouse.store.pull_ollama import pull_ollama
asyncio.run(pull_ollama(Store(sys.argv[1]), sys.argv[2], insecure=True))
"""


def test_kill_9_mid_pull_leaves_a_consistent_store_and_resumes(
    registry: FakeRegistry, store: Store, gguf: Path
) -> None:
    digest, size = big_digest(registry)
    registry.rate = 12e6  # bytes/s per connection: the child takes seconds
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    name = registry.name("library", "tiny", "latest")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(store.root), name], env=env)
    try:
        deadline = time.monotonic() + 30
        done = 0
        while done < 24 << 20:
            assert child.poll() is None, "the child finished or died before it could be killed"
            assert time.monotonic() < deadline, "no progress recorded in time"
            time.sleep(0.1)
            try:
                done = recorded_done(store, digest)
            except (OSError, ValueError):
                continue
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert_store_consistent(store)
    assert not store.has_blob(digest)
    registry.rate = None
    registry.reset_stats()
    rec = pull(store, name)
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    sent = registry.stats.bytes_sent[digest]
    assert sent < size and sent <= size - done + size * 0.05
