"""Pull throughput against curl on loopback, and how much a resumed pull fetches twice.

    .venv/bin/python bench/pull.py [--size-mib 512] [--rounds 5] [--part-size-mib 64] [--json]

The fake registry (tests/fakes/registry.py, its own process: token realm, 307 to a "CDN" port that
serves with sendfile and byte ranges) serves one pseudo-random blob as the model layer of a manifest.
Round by round, in rotating order so machine drift hits all alike:

  curl-null   curl -s -o /dev/null <CDN URL>          transfer only (the target's baseline)
  curl-file   curl -s -o FILE (same file system)      transfer + write to the page cache
  curl-verify curl -s -o FILE, then sha256 + fsync    the same work a verified pull does
  pull        pull_ollama into a fresh store          manifest, token, redirect, ranges, sha256,
                                                      fsync, rename (uvloop, as the server runs it)

MB/s is blob bytes / wall time (10^6 bytes). Ratios are per round, medians reported. Resume: the
registry breaks off every response for the blob after half of it was sent and answers 503 after,
retries are off, so the pull fails; a second pull resumes. Kill: a pull in its own process, the
registry throttled, gets SIGKILL once its record shows ~50%; a second pull resumes. "extra" is every
byte the registry sent for the blob over both attempts beyond its size, as % of it (what was in
flight or arrived after the last record when the pull died is fetched twice).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from enginehouse.errors import UpstreamUnavailable
from enginehouse.server.runtime import run_loop
from enginehouse.store import Store
from enginehouse.store import download as dl
from enginehouse.store.pull_ollama import pull_ollama

ROOT = Path(__file__).resolve().parent.parent

MODEL = "library/bench:latest"


def make_blob(path: Path, size: int) -> None:
    seed = hashlib.sha256(b"enginehouse-bench").digest()
    block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "little")).digest() for i in range(1 << 15))  # 1 MiB
    with open(path, "wb") as fh:
        for i in range(size // len(block)):
            fh.write(bytes(b ^ (i & 0xFF) for b in block[:64]) + block[64:])
        fh.write(block[: size % len(block)])


class Registry:
    def __init__(self, work: Path, blob: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fakes.registry",
                "--root",
                str(work / "registry"),
                "--model",
                f"{MODEL}={blob}",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.host: str = info["host"]
        layer = info["manifests"][MODEL]["layers"][0]
        self.digest: str = layer["digest"]
        self.size: int = layer["size"]
        self.cdn_url = f"http://127.0.0.1:{info['cdn_port']}/cdn/{self.digest}?sig=bench"

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.host}{path}", data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def settle() -> None:
    """Let the previous run's dirty pages reach the disk so each run starts alike."""
    os.sync()
    time.sleep(0.2)


def time_curl_null(reg: Registry) -> float:
    t = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", os.devnull, reg.cdn_url], check=True)
    return time.perf_counter() - t


def time_curl_file(reg: Registry, work: Path) -> float:
    out = work / "curl.out"
    t = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(out), reg.cdn_url], check=True)
    dt = time.perf_counter() - t
    out.unlink()
    return dt


def time_curl_verify(reg: Registry, work: Path) -> float:
    out = work / "curl.out"
    t = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(out), reg.cdn_url], check=True)
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(out, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
        os.fsync(fh.fileno())
    dt = time.perf_counter() - t
    assert "sha256:" + h.hexdigest() == reg.digest
    out.unlink()
    return dt


def time_pull(reg: Registry, work: Path, part_size: int) -> float:
    root = work / "store"
    shutil.rmtree(root, ignore_errors=True)
    store = Store(root)
    name = f"{reg.host}/{MODEL}"
    t = time.perf_counter()
    run_loop(lambda: pull_ollama(store, name, insecure=True, part_size=part_size))
    dt = time.perf_counter() - t
    shutil.rmtree(root, ignore_errors=True)
    return dt


def measure_resume(reg: Registry, work: Path, part_size: int) -> dict[str, Any]:
    root = work / "store-resume"
    shutil.rmtree(root, ignore_errors=True)
    store = Store(root)
    name = f"{reg.host}/{MODEL}"
    reg.call("/_fake/control", {"reset_stats": True, "fail_after": {reg.digest: reg.size // 2}})
    retries = dl.tuning.RETRIES
    dl.tuning.RETRIES = 0
    try:
        with contextlib.suppress(UpstreamUnavailable):
            run_loop(lambda: pull_ollama(store, name, insecure=True, part_size=part_size))
    finally:
        dl.tuning.RETRIES = retries
    first = reg.call("/_fake/stats")["bytes_sent"].get(reg.digest, 0)
    state = json.loads((dl.partial_dir(store) / (reg.digest.replace(":", "-") + ".json")).read_bytes())
    kept = sum(done for _, _, done in state["parts"])
    reg.call("/_fake/control", {"reset_stats": True, "clear_outage": True})
    t = time.perf_counter()
    run_loop(lambda: pull_ollama(store, name, insecure=True, part_size=part_size))
    dt = time.perf_counter() - t
    second = reg.call("/_fake/stats")["bytes_sent"].get(reg.digest, 0)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "interrupted_at_pct": round(100 * first / reg.size, 1),
        "kept_pct": round(100 * kept / reg.size, 1),
        "refetched_pct": round(100 * second / reg.size, 1),
        "extra_pct": round(100 * (first + second - reg.size) / reg.size, 2),
        "resume_s": round(dt, 3),
    }


KILL_CHILD = """
import asyncio, sys
from enginehouse.store import Store
from enginehouse.store.pull_ollama import pull_ollama
asyncio.run(pull_ollama(Store(sys.argv[1]), sys.argv[2], insecure=True, part_size=int(sys.argv[3])))
"""


def measure_kill_resume(reg: Registry, work: Path, part_size: int, rate: float) -> dict[str, Any]:
    """kill -9 a pull (its own process, served at ``rate`` bytes/s per connection) at ~50%, then resume."""
    root = work / "store-kill"
    shutil.rmtree(root, ignore_errors=True)
    store = Store(root)
    name = f"{reg.host}/{MODEL}"
    state = dl.partial_dir(store) / (reg.digest.replace(":", "-") + ".json")
    reg.call("/_fake/control", {"reset_stats": True, "rate": rate})
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(root), name, str(part_size)])
    kept = 0
    try:
        deadline = time.monotonic() + 120
        while kept < reg.size // 2 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            with contextlib.suppress(OSError, ValueError):
                kept = sum(done for _, _, done in json.loads(state.read_bytes())["parts"])
    finally:
        child.kill()
        child.wait()
    time.sleep(0.2)  # let the registry notice the dead connections
    first = reg.call("/_fake/stats")["bytes_sent"].get(reg.digest, 0)
    kept = sum(done for _, _, done in json.loads(state.read_bytes())["parts"])
    reg.call("/_fake/control", {"reset_stats": True, "rate": None})
    run_loop(lambda: pull_ollama(store, name, insecure=True, part_size=part_size))
    second = reg.call("/_fake/stats")["bytes_sent"].get(reg.digest, 0)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "killed_at_pct": round(100 * first / reg.size, 1),
        "kept_pct": round(100 * kept / reg.size, 1),
        "refetched_pct": round(100 * second / reg.size, 1),
        "extra_pct": round(100 * (first + second - reg.size) / reg.size, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--part-size-mib", type=int, default=64)
    parser.add_argument(
        "--kill-rate-mb", type=float, default=50.0, help="MB/s per connection while a pull is killed"
    )
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    size = args.size_mib << 20
    part_size = args.part_size_mib << 20
    have_curl = shutil.which("curl") is not None
    with tempfile.TemporaryDirectory(prefix="eh-bench-pull-", dir=args.dir) as tmp:
        work = Path(tmp)
        blob = work / "blob.bin"
        make_blob(blob, size)
        reg = Registry(work, blob)
        try:
            paths = ["curl-null", "curl-file", "curl-verify", "pull"] if have_curl else ["pull"]
            times: dict[str, list[float]] = {p: [] for p in paths}
            runners = {
                "curl-null": lambda: time_curl_null(reg),
                "curl-file": lambda: time_curl_file(reg, work),
                "curl-verify": lambda: time_curl_verify(reg, work),
                "pull": lambda: time_pull(reg, work, part_size),
            }
            for p in paths:  # warm-up: page cache, connections, imports
                runners[p]()
            for r in range(args.rounds):
                for p in paths[r % len(paths) :] + paths[: r % len(paths)]:
                    settle()
                    times[p].append(runners[p]())
            settle()
            resume = measure_resume(reg, work, part_size)
            settle()
            killed = measure_kill_resume(reg, work, part_size, args.kill_rate_mb * 1e6)
        finally:
            reg.close()
    mbps = {p: [reg.size / t / 1e6 for t in ts] for p, ts in times.items()}
    result: dict[str, Any] = {
        "blob_mib": args.size_mib,
        "rounds": args.rounds,
        "part_size_mib": args.part_size_mib,
        "cpus": os.cpu_count(),
        "curl": have_curl,
        "mbps_median": {p: round(statistics.median(v), 1) for p, v in mbps.items()},
        "mbps_all": {p: [round(x) for x in v] for p, v in mbps.items()},
        "resume": resume,
        "kill_resume": killed,
    }
    if have_curl:
        for base in ("curl-null", "curl-file", "curl-verify"):
            ratios = [times[base][i] / times["pull"][i] for i in range(args.rounds)]
            result[f"ratio_pull_vs_{base}"] = round(statistics.median(ratios), 3)
    if args.json:
        print(json.dumps(result))
        return
    print(f"blob {args.size_mib} MiB, {args.rounds} rounds, parts of {args.part_size_mib} MiB")
    if not have_curl:
        print("curl not found on PATH: only the pull is measured")
    print(f"{'path':<12} {'median MB/s':>12}   all rounds")
    for p in paths:
        print(f"{p:<12} {result['mbps_median'][p]:>12.1f}   {result['mbps_all'][p]}")
    if have_curl:
        for base in ("curl-null", "curl-file", "curl-verify"):
            print(f"pull / {base:<11} (median of per-round ratios): {result[f'ratio_pull_vs_{base}']:.2f}")
    r = resume
    k = killed
    print(
        f"resume: broken off at {r['interrupted_at_pct']}% sent, {r['kept_pct']}% kept, "
        f"{r['refetched_pct']}% fetched again; extra {r['extra_pct']}% of the blob;"
        f" resume took {r['resume_s']}s"
    )
    print(
        f"kill -9: at {k['killed_at_pct']}% sent ({args.kill_rate_mb:g} MB/s per connection),"
        f" {k['kept_pct']}% kept, {k['refetched_pct']}% fetched again; extra {k['extra_pct']}% of the blob"
    )


if __name__ == "__main__":
    main()
