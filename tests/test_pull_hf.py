"""Pulling GGUFs from Hugging Face (hf.co/{owner}/{repo}[:{quant}]) and whole repositories, against a
fake hub (tests/fakes/hf_hub.py) on loopback that serves real files and 302s downloads to a "CDN"."""

from __future__ import annotations

import asyncio
import filecmp
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enginehouse.errors import InvalidDigest, InvalidRequest, ModelNotFound, UpstreamUnavailable
from enginehouse.store import Store, read_gguf_info
from enginehouse.store import download as dl
from enginehouse.store.hf import (
    HfAccessDenied,
    HfFile,
    HfRepoNotFound,
    choose_gguf,
    download_hf_repo,
    hf_endpoint,
    hf_repo_root,
    hf_token,
    parse_hf_name,
    pull_hf,
)
from enginehouse.store.pull import pull_model
from enginehouse.store.store import MEDIA_MODEL
from tests.fakes.hf_hub import FakeHub
from tests.fakes.vision_projector import write_projector

TOKEN = "hf_test_token_0123456789"
Q4 = "SmolLM2-135M-Instruct-Q4_1.gguf"
Q8 = "SmolLM2-135M-Instruct-Q8_0.gguf"
TUNING = getattr(dl, "tuning", dl)  # where the download tunables live


@pytest.fixture(scope="module")
def gguf(bundled_gguf: Path) -> Path:
    return bundled_gguf


@pytest.fixture(scope="module")
def gguf_sha256(gguf: Path) -> str:
    return hashlib.sha256(gguf.read_bytes()).hexdigest()


@pytest.fixture
def hub(tmp_path: Path, gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with FakeHub(tmp_path / "hub") as h:
        h.tokens.add(TOKEN)
        h.add_repo("owner", "repo", {Q4: gguf, Q8: gguf, "README.md": b"# SmolLM2 GGUF\n"})
        monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
        yield h


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TUNING, "BACKOFF_BASE", 0.05)


def pull(store: Store, name: str, **kw: Any) -> Any:
    kw.setdefault("insecure", True)
    return asyncio.run(pull_hf(store, name, **kw))


def has_auth(headers: dict[str, str]) -> bool:
    return "authorization" in {k.lower() for k in headers}


def assert_nothing_written(store: Store) -> None:
    for d in (store.blobs_dir, store.manifests_dir, dl.partial_dir(store)):
        assert not d.exists() or not [p for p in d.rglob("*") if p.is_file()], d


def check_progress(events: list[dict[str, Any]], digest: str, size: int) -> None:
    assert events[0] == {"status": "pulling manifest"}
    assert [e["status"] for e in events[-3:]] == ["verifying sha256 digest", "writing manifest", "success"]
    middle = events[1:-3]
    assert middle, "no download progress was reported"
    for e in middle:
        assert set(e) == {"status", "digest", "total", "completed"}
        assert e["status"] == "pulling " + digest.removeprefix("sha256:")[:12]
        assert e["digest"] == digest and e["total"] == size
    completed = [e["completed"] for e in middle]
    assert completed == sorted(completed) and completed[-1] == size


# -- names, endpoint, token -----------------------------------------------------------------------


def test_names_endpoint_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = parse_hf_name("huggingface.co/Bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M")
    assert (ref.owner, ref.repo, ref.quant) == ("Bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M")
    assert ref.name.full == "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M"
    assert parse_hf_name("hf.co/a/b").quant is None and parse_hf_name("hf.co/a/b:latest").quant is None
    for bad in ("hf.co/../b:Q4", "hf.co/a/b:../x", "hf.co/a/b/c", "registry.ollama.ai/a/b"):
        with pytest.raises(InvalidRequest):
            parse_hf_name(bad)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hf_endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080/hub/")
    assert hf_endpoint() == "http://mirror.example:8080/hub"
    assert hf_endpoint("https://x.example") == "https://x.example"
    with pytest.raises(InvalidRequest):
        hf_endpoint("ftp://x.example")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert hf_token() is None
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert hf_token() == "from-env" and hf_token("given") == "given"


def test_choosing_the_gguf() -> None:
    sha = "a" * 64
    files = [HfFile(f"m-{q}.gguf", 10, sha) for q in ("Q4_K_S", "Q4_K_M", "Q8_0", "IQ4_XS", "F16")] + [
        HfFile("mmproj-m-f16.gguf", 10, sha),
        HfFile("big/m-Q6_K-00001-of-00002.gguf", 10, sha),
        HfFile("big/m-Q6_K-00002-of-00002.gguf", 10, sha),
        HfFile("README.md", 10, None),
    ]
    assert choose_gguf(files, None, "hf.co/o/r") == (files[1], "Q4_K_M")
    assert choose_gguf(files, "q8_0", "hf.co/o/r") == (files[2], "q8_0")  # case-insensitive
    assert choose_gguf(files, "Q4_K_S", "hf.co/o/r")[0] is files[0]
    assert choose_gguf(files, "IQ4_XS", "hf.co/o/r")[0] is files[3]
    with pytest.raises(InvalidRequest, match=r"'Q4_K' is ambiguous .*Q4_K_S.*Q4_K_M") as exc:
        choose_gguf(files, "Q4_K", "hf.co/o/r")
    assert "Q8_0" in exc.value.message  # every choice is listed
    with pytest.raises(InvalidRequest, match=r"no GGUF file for quantisation 'Q5_K_M'; choose one of") as exc:
        choose_gguf(files, "Q5_K_M", "hf.co/o/r")
    for choice in ("F16 (m-F16.gguf)", "IQ4_XS", "Q4_K_M", "Q4_K_S", "Q8_0", "Q6_K (big/m-Q6_K-00001-of"):
        assert choice in exc.value.message
    assert "mmproj" not in exc.value.message and "00002-of" not in exc.value.message
    with pytest.raises(InvalidRequest, match=r"split in 2 files"):
        choose_gguf(files, "Q6_K", "hf.co/o/r")
    with pytest.raises(InvalidRequest, match="no GGUF file for quantisation 'mmproj'"):
        choose_gguf(files, "mmproj", "hf.co/o/r")  # projectors are not models
    two = [HfFile("m-Q4_1.gguf", 1, sha), HfFile("m-Q8_0.gguf", 1, sha)]
    with pytest.raises(InvalidRequest, match=r"no single Q4_K_M: name one as hf.co/o/r:<quant>.*Q4_1.*Q8_0"):
        choose_gguf(two, None, "hf.co/o/r")
    assert choose_gguf(two[:1], None, "hf.co/o/r") == (two[0], "Q4_1")  # the only one
    assert choose_gguf([HfFile("model.gguf", 1, sha)], None, "l") == (HfFile("model.gguf", 1, sha), "latest")
    with pytest.raises(InvalidRequest, match="no GGUF file"):
        choose_gguf([HfFile("model.safetensors", 1, sha)], None, "hf.co/o/r")


# -- pulling --------------------------------------------------------------------------------------


def test_pull_quant_verified_via_cdn_then_again_for_free(
    hub: FakeHub, store: Store, gguf: Path, gguf_sha256: str
) -> None:
    events: list[dict[str, Any]] = []
    rec = pull(store, "hf.co/owner/repo:Q4_1", progress=events.append, part_size=32 << 20)
    assert rec.name.full == "hf.co/owner/repo:Q4_1"
    assert rec.model_digest == "sha256:" + gguf_sha256
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    assert rec.model_path.parent == store.blobs_dir  # the downloaded blob itself, no second copy
    assert [layer["mediaType"] for layer in rec.manifest["layers"]] == [MEDIA_MODEL]  # no template layer
    assert rec.template is None and rec.params == {}
    info = read_gguf_info(rec.model_path)
    assert rec.config["model_family"] == info.architecture == "llama"
    assert info.chat_template  # the GGUF's own template is what will be used
    check_progress(events, rec.model_digest, gguf.stat().st_size)
    assert hub.stats.range_requests[gguf_sha256] >= 2  # parallel ranges from the CDN
    assert hub.stats.cdn_headers and not any(has_auth(h) for h in hub.stats.cdn_headers)
    assert not list(dl.partial_dir(store).iterdir())
    assert store.resolve("hf.co/owner/repo:q4_1").model_digest == rec.model_digest

    hub.reset_stats()  # the same pull again costs the listing only
    events.clear()
    again = pull(store, "hf.co/owner/repo:Q4_1", progress=events.append)
    assert again.model_digest == rec.model_digest and again.manifest_digest == rec.manifest_digest
    assert hub.stats.api_requests == 1 and hub.stats.resolve_requests == 0 and hub.stats.cdn_requests == 0
    check_progress(events, rec.model_digest, gguf.stat().st_size)

    hub.reset_stats()  # another quant with the same bytes: registered, nothing downloaded
    q8 = asyncio.run(pull_model(store, "huggingface.co/Owner/Repo:Q8_0", insecure=True))
    assert q8.name.full == "hf.co/owner/repo:Q8_0" and q8.model_digest == rec.model_digest
    assert hub.stats.cdn_requests == 0 and not hub.stats.bytes_sent


def test_default_quant_is_q4_k_m_and_the_typed_name_resolves(hub: FakeHub, store: Store, gguf: Path) -> None:
    hub.add_repo(
        "owner",
        "multi",
        {"m-Q8_0.gguf": b"not downloaded", "m-Q4_K_M.gguf": gguf, "m-IQ2_XXS.gguf": b"nor this"},
    )
    rec = pull(store, "hf.co/owner/multi")
    assert rec.name.full == "hf.co/owner/multi:Q4_K_M"
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    assert store.resolve("hf.co/owner/multi").model_digest == rec.model_digest  # ...:latest, as typed
    assert {m.name.tag for m in store.list_models()} == {"Q4_K_M", "latest"}

    hub.add_repo("owner", "single", {"tiny-Q4_1.gguf": gguf})
    only = pull(store, "hf.co/owner/single:latest")
    assert only.name.full == "hf.co/owner/single:Q4_1" and only.model_digest == rec.model_digest


def test_no_default_ambiguous_and_unknown_quant_list_the_choices(hub: FakeHub, store: Store) -> None:
    with pytest.raises(InvalidRequest, match=r"no single Q4_K_M.*Q4_1 \(SmolLM2-135M-Instruct-Q4_1\.gguf\)"):
        pull(store, "hf.co/owner/repo")
    with pytest.raises(InvalidRequest, match=r"ambiguous.*Q4_1.*Q8_0"):
        pull(store, "hf.co/owner/repo:SmolLM2")
    with pytest.raises(InvalidRequest, match=r"no GGUF file for quantisation 'Q5_K_M'; choose one of: Q4_1"):
        pull(store, "hf.co/owner/repo:Q5_K_M")
    hub.add_repo(
        "owner", "split", {"m-Q4_K_M-00001-of-00002.gguf": b"a", "m-Q4_K_M-00002-of-00002.gguf": b"b"}
    )
    with pytest.raises(InvalidRequest, match="split in 2 files"):
        pull(store, "hf.co/owner/split:Q4_K_M")
    assert hub.stats.resolve_requests == 0 and hub.stats.cdn_requests == 0
    assert_nothing_written(store)


def test_a_gguf_without_sha256_is_refused(hub: FakeHub, store: Store) -> None:
    commit = hub.add_repo("owner", "plain", {"m-Q4_0.gguf": b"GGUF in git, not LFS"})
    hub.repos[("owner", "plain")].commits[commit]["m-Q4_0.gguf"].lfs = False
    with pytest.raises(UpstreamUnavailable, match=r"no sha256 for m-Q4_0\.gguf.*cannot be verified"):
        pull(store, "hf.co/owner/plain:Q4_0")
    assert hub.stats.resolve_requests == 0
    assert_nothing_written(store)


def test_token_goes_to_the_hub_only_never_to_the_cdn(
    hub: FakeHub, store: Store, gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("meta", "gated", {Q4: gguf}, gated=True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    rec = pull(store, "hf.co/meta/gated:Q4_1")
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    assert hub.stats.hub_headers and all(
        h.get("Authorization") == f"Bearer {TOKEN}" for h in hub.stats.hub_headers
    )
    assert hub.stats.cdn_headers and not any(has_auth(h) for h in hub.stats.cdn_headers)


@pytest.mark.parametrize("kind", ["gated", "gated-listing-401", "private"])
def test_gated_or_private_without_token_fails_clearly_and_writes_nothing(
    hub: FakeHub, store: Store, gguf: Path, kind: str
) -> None:
    hub.add_repo("meta", "locked", {Q4: gguf}, gated=kind != "private", private=kind == "private")
    hub.gated_listing = kind == "gated"
    expected: type[Exception] = HfRepoNotFound if kind == "private" else HfAccessDenied
    with pytest.raises(expected, match="HF_TOKEN") as exc:
        pull(store, "hf.co/meta/locked:Q4_1")
    if kind != "private":
        assert "gated" in exc.value.message and exc.value.status == 403
    else:
        assert "private" in exc.value.message and exc.value.status == 404
    assert hub.stats.cdn_requests == 0 and not hub.stats.bytes_sent
    assert_nothing_written(store)


def test_a_refused_token_or_ungranted_access_is_reported(hub: FakeHub, store: Store, gguf: Path) -> None:
    with pytest.raises(HfAccessDenied, match=r"refused the token in HF_TOKEN.*Invalid credentials"):
        pull(store, "hf.co/owner/repo:Q4_1", token="hf_wrong")
    hub.add_repo("meta", "gated", {Q4: gguf}, gated=True)
    hub.tokens.add("hf_not_granted")
    hub.ungranted.add("hf_not_granted")
    with pytest.raises(HfAccessDenied, match=r"gated and the token in HF_TOKEN has no access .*HTTP 403"):
        pull(store, "hf.co/meta/gated:Q4_1", token="hf_not_granted")
    assert hub.stats.cdn_requests == 0  # the one-byte probe stopped at the hub
    assert_nothing_written(store)
    with pytest.raises(HfAccessDenied, match=r"no access .*HTTP 403"):
        asyncio.run(download_hf_repo(None, "meta/gated", hf_repo_root(store), token="hf_not_granted"))


def test_unknown_repository_revision(hub: FakeHub, store: Store) -> None:
    with pytest.raises(
        ModelNotFound, match=r"not found on Hugging Face: repository nobody/nothing does not"
    ) as exc:
        pull(store, "hf.co/nobody/nothing:Q4_1")
    assert isinstance(exc.value, HfRepoNotFound) and exc.value.status == 404
    assert "HF_TOKEN" in exc.value.message  # without a token, "not found" may mean private
    with pytest.raises(HfRepoNotFound, match="does not exist"):
        pull(store, "hf.co/nobody/nothing:Q4_1", token=TOKEN)
    with pytest.raises(HfRepoNotFound, match="has no revision v9"):
        pull(store, "hf.co/owner/repo:Q4_1", revision="v9")
    assert_nothing_written(store)


def test_pinned_revision(hub: FakeHub, store: Store, gguf: Path) -> None:
    old = hub.repos[("owner", "repo")].refs["main"]
    hub.add_repo("owner", "repo", {"m-Q4_1.gguf": b"GGUF newer, broken"})  # main moves on
    rec = pull(store, "hf.co/owner/repo:Q4_1", revision=old, endpoint=hub.endpoint)
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)


def test_dropped_connection_resumes_within_the_pull(
    hub: FakeHub, store: Store, gguf: Path, gguf_sha256: str
) -> None:
    size = gguf.stat().st_size
    hub.drop_after[gguf_sha256] = 20 << 20
    rec = pull(store, "hf.co/owner/repo:Q4_1")
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    assert hub.stats.bytes_sent[gguf_sha256] <= size * 1.05


def test_interrupted_pull_resumes_on_the_next_one(
    hub: FakeHub, store: Store, gguf: Path, gguf_sha256: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TUNING, "RETRIES", 0)
    size = gguf.stat().st_size
    hub.fail_after[gguf_sha256] = 40 << 20  # then every CDN response breaks off, 503 after
    with pytest.raises(UpstreamUnavailable, match="resumes"):
        pull(store, "hf.co/owner/repo:Q4_1")
    assert not store.has_blob("sha256:" + gguf_sha256)
    assert not store.manifests_dir.exists()
    state = json.loads((dl.partial_dir(store) / f"sha256-{gguf_sha256}.json").read_bytes())
    done = sum(d for _, _, d in state["parts"])
    assert done >= 20 << 20
    hub.outage.clear()
    hub.reset_stats()
    rec = pull(store, "hf.co/owner/repo:Q4_1")
    assert filecmp.cmp(rec.model_path, gguf, shallow=False)
    assert hub.stats.bytes_sent[gguf_sha256] <= size - done + size * 0.05


def test_corrupt_download_is_refused(hub: FakeHub, store: Store, gguf: Path, tmp_path: Path) -> None:
    commit = hub.add_repo("owner", "liar", {"m-Q4_1.gguf": gguf})
    entry = hub.repos[("owner", "liar")].commits[commit]["m-Q4_1.gguf"]
    bad = tmp_path / "bad.gguf"
    data = bytearray(gguf.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    hub._by_sha[entry.sha256] = bad  # the CDN serves other bytes than the listing's sha256
    with pytest.raises(InvalidDigest, match=entry.sha256):
        pull(store, "hf.co/owner/liar:Q4_1")
    assert_nothing_written(store)


def test_plain_http_endpoint_needs_insecure(hub: FakeHub, store: Store) -> None:
    with pytest.raises(UpstreamUnavailable, match="refusing plain-http URL"):
        pull(store, "hf.co/owner/repo:Q4_1", insecure=False)
    assert hub.stats.api_requests == 0


# -- whole repositories ---------------------------------------------------------------------------


def same_tree(got: Path, expected: Path, patterns: tuple[str, ...] = ("*",)) -> None:
    want = {
        p.relative_to(expected).as_posix()
        for p in expected.rglob("*")
        if p.is_file() and any(p.match(pat) for pat in patterns)
    }
    have = {p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file() and ".cache" not in p.parts}
    assert have == want
    for rel in want:
        assert filecmp.cmp(got / rel, expected / rel, shallow=False), rel


def test_download_whole_repo_pinned_and_main(
    hub: FakeHub, store: Store, minilm_dir: Path, tmp_path: Path
) -> None:
    pinned = hub.add_dir("sentence-transformers", "all-MiniLM-L6-v2", minilm_dir)
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "config.json").write_text(json.dumps({"changed": True}))
    (changed / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    main = hub.add_repo(
        "sentence-transformers",
        "all-MiniLM-L6-v2",
        {"config.json": changed / "config.json", "vocab.txt": changed / "vocab.txt"},
    )
    root = hf_repo_root(store)
    got = asyncio.run(download_hf_repo(None, "sentence-transformers/all-MiniLM-L6-v2", root, revision=pinned))
    assert got == root / "sentence-transformers" / "all-MiniLM-L6-v2" / pinned
    same_tree(got, minilm_dir)
    assert (got / "1_Pooling" / "config.json").is_file()
    assert not any(has_auth(h) for h in hub.stats.cdn_headers) and hub.stats.cdn_requests >= 1

    hub.reset_stats()  # again: nothing is downloaded twice
    assert (
        asyncio.run(
            download_hf_repo(hub.endpoint, "sentence-transformers/all-MiniLM-L6-v2", root, revision=pinned)
        )
        == got
    )
    assert hub.stats.cdn_requests == 0

    latest = asyncio.run(
        download_hf_repo(
            hub.endpoint, "sentence-transformers/all-MiniLM-L6-v2", root, allow_patterns=["*.json"]
        )
    )
    assert latest == root / "sentence-transformers" / "all-MiniLM-L6-v2" / main
    same_tree(latest, changed, ("*.json",))


def test_download_whole_gated_repo(
    hub: FakeHub, store: Store, minilm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_dir("corp", "secret-minilm", minilm_dir, gated=True)
    root = hf_repo_root(store)
    with pytest.raises(HfAccessDenied, match=r"gated.*HF_TOKEN"):
        asyncio.run(download_hf_repo(None, "corp/secret-minilm", root))
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]
    with pytest.raises(HfRepoNotFound, match="does not exist"):
        asyncio.run(download_hf_repo(None, "corp/nothing", root, token=TOKEN))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    got = asyncio.run(download_hf_repo(None, "corp/secret-minilm", root, allow_patterns=["*.safetensors"]))
    same_tree(got, minilm_dir, ("*.safetensors",))
    assert hub.stats.cdn_headers and not any(has_auth(h) for h in hub.stats.cdn_headers)
    assert any(h.get("Authorization") == f"Bearer {TOKEN}" for h in hub.stats.hub_headers)


def test_a_vision_repository_brings_its_projector(
    hub: FakeHub, store: Store, gguf: Path, tmp_path: Path
) -> None:
    projector = write_projector(tmp_path / "mmproj.gguf")
    files = {"m-Q4_K_M.gguf": gguf, "mmproj-m-BF16.gguf": b"not this one", "mmproj-m-F16.gguf": projector}
    hub.add_repo("owner", "vision", files)
    rec = pull(store, "hf.co/owner/vision")
    assert rec.name.tag == "Q4_K_M"  # the projector is never taken for the weights
    assert len(rec.projectors) == 1 and filecmp.cmp(rec.projectors[0], projector, shallow=False)
    assert store.resolve("hf.co/owner/vision").projectors == rec.projectors  # ...:latest too
    again = pull(store, "hf.co/owner/vision")
    assert again.manifest_digest == rec.manifest_digest
