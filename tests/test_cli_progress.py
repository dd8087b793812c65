"""Progress people can see when the output is not a terminal: the renderer's lines, its heartbeat, and
the CLI with its output on a pipe (a build against a local index and a fake cmake; a pull from the fake
registry)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from enginehouse.cli.engines import STAGES
from enginehouse.cli.progress import Reporter, human_seconds
from enginehouse.engines import llama_install as li
from tests.fakes.registry import FakeRegistry

ROOT = Path(__file__).resolve().parent.parent
ANSI_OR_CR = re.compile(r"\x1b\[|\r")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain(clock: Clock, **kw: object) -> tuple[Reporter, io.StringIO]:
    out = io.StringIO()
    return Reporter(stream=out, interactive=False, clock=clock, **kw), out  # type: ignore[arg-type]


def test_a_pipe_gets_plain_lines_never_bars() -> None:
    reporter = Reporter(stream=io.StringIO())
    assert reporter.interactive is False  # a StringIO is no terminal


@pytest.mark.parametrize(
    ("updates", "expected"),
    [
        (  # a stage in percent: one line per 10%, not one per update; done with its time
            [(0, 0, 100), (1, 3, 100), (1, 9, 100), (2, 10, 100), (3, 14, 100), (4, 35, 100), (70, 100, 100)],
            ["Compiling: started", "Compiling: 10% (2s)", "Compiling: 35% (4s)", "Compiling: done (1m 10s)"],
        ),
        (  # nothing moves for a while: a line every 30 s anyway
            [(0, 0, 100), (29, 1, 100), (30, 2, 100), (45, 3, 100), (61, 4, 100)],
            [
                "Compiling: started",
                "Compiling: 2% (30s)",
                "Compiling: 4% (1m 01s)",
                "Compiling: done (1m 01s)",
            ],
        ),
        (  # no total known: still running, every 30 s
            [(0, 0, None), (10, 0, None), (31, 0, None), (40, 0, None)],
            ["Compiling: started", "Compiling: still running (31s)", "Compiling: done (40s)"],
        ),
    ],
)
def test_stage_lines(updates: list[tuple[float, float, float | None]], expected: list[str]) -> None:
    clock = Clock()
    reporter, out = plain(clock, labels={"build": "Compiling"})
    with reporter:
        start = clock.now
        for at, done, total in updates:
            clock.now = start + at
            reporter.stage("build", done, total)
    assert out.getvalue().splitlines() == expected


def test_sequential_stages_end_when_the_next_begins() -> None:
    clock = Clock()
    reporter, out = plain(clock, labels=STAGES, sequential=True)
    with reporter:
        reporter.stage("download", 5_000_000, None)  # no Content-Length: a size, no percentage
        clock.now += 31
        reporter.stage("download", 12_000_000, None)
        reporter.stage("extract", 1, 10)
        reporter.stage("extract", 10, 10)
        reporter.stage("configure", 0, 100)
        clock.now += 5
    assert out.getvalue().splitlines() == [
        "Downloading llama.cpp source: started",
        "Downloading llama.cpp source: 12.0 MB (31s)",
        "Downloading llama.cpp source: done (31s, 12.0 MB)",
        "Extracting: started",
        "Extracting: done (0s)",
        "Configuring (cmake): started",
        "Configuring (cmake): done (5s)",  # the command ended well: what was running is done
    ]


def test_a_failure_does_not_say_done() -> None:
    clock = Clock()
    reporter, out = plain(clock)
    with pytest.raises(RuntimeError), reporter:
        reporter.stage("build", 10, 100)
        raise RuntimeError("cmake failed")
    assert out.getvalue().splitlines() == ["build: started"]


def test_pull_events_bytes_and_statuses() -> None:
    clock = Clock()
    reporter, out = plain(clock)
    size = 200_000_000
    with reporter:
        reporter.pull_event({"status": "pulling manifest"})
        for i in range(0, 11):
            clock.now += 1
            event = {"status": "pulling 0123456789ab", "digest": "sha256:0123", "total": size}
            reporter.pull_event({**event, "completed": size * i // 10})
        reporter.pull_event({"status": "pulling 2222", "digest": "sha256:2222", "total": 10, "completed": 10})
        reporter.pull_event({"status": "success"})
    lines = out.getvalue().splitlines()
    assert lines[0] == "pulling manifest"
    assert lines[1] == "pulling 0123456789ab: started"
    assert lines[2:11] == [
        f"pulling 0123456789ab: {p}% of 200.0 MB ({s}s)"
        for p, s in zip(range(10, 100, 10), range(1, 10), strict=True)
    ]
    assert lines[11] == "pulling 0123456789ab: done (10s, 200.0 MB)"
    assert lines[12:] == ["pulling 2222: done (0s, 10 B)", "success"]  # already there: no "started"


def test_heartbeat_writes_while_nothing_reports() -> None:
    out = io.StringIO()
    with Reporter(stream=out, interactive=False, every_s=0.2, labels={"pip": "Installing"}) as reporter:
        reporter.stage("pip", 0, None)
        time.sleep(0.9)
        beats = out.getvalue().splitlines()[1:]
    assert len(beats) >= 2
    assert all(line.startswith("Installing: still running (") for line in beats)


def test_terminal_gets_bars() -> None:
    out = io.StringIO()
    with Reporter(stream=out, interactive=True, labels=STAGES) as reporter:
        reporter.stage("build", 50, 100)
        reporter.note("a note")
        reporter.update("convert", 0, None, label="Converting ./m[/x]", detail="[/tmp/x] not markup")
    text = out.getvalue()
    assert "Compiling llama-server, rpc-server" in text and "50%" in text and "a note" in text
    assert "Converting ./m[/x]" in text and "[/tmp/x] not markup" in text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.9, "59s"), (61, "1m 01s"), (3600 + 120, "1h 02m")]
)
def test_human_seconds(seconds: float, text: str) -> None:
    assert human_seconds(seconds) == text


# -- the CLI, output on a pipe --------------------------------------------------------------------------

FAKE_CMAKE = """\
#!/bin/sh
# configure: -S SRC -B DIR ...; build: --build DIR --target ... -j N
if [ "$1" = "--build" ]; then
  for p in 10 20 30 40 50 60 70 80 90 99; do echo "[ $p%] Building CXX object x$p.o"; done
  mkdir -p "$2/bin"
  for exe in llama-server ggml-rpc-server; do
    printf '#!/bin/sh\\necho "version: 0 (fake)"\\n' > "$2/bin/$exe"; chmod +x "$2/bin/$exe"
  done
else
  echo "-- The C compiler identification is GNU"
fi
"""


def sdist_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {"CMakeLists.txt": b"project(x)\n", "tools/server/server.cpp": b"//\n"}.items():
            info = tarfile.TarInfo(f"llama_cpp_python-{li.SDIST_VERSION}/vendor/llama.cpp/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def index() -> Iterator[tuple[str, bytes]]:
    """A package index with one sdist: its URL and the sdist's bytes."""
    data = sdist_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith("/simple/"):
                files = [{"filename": li.SDIST_FILENAME, "url": "/files/x.tar.gz", "hashes": {}}]
                body = json.dumps({"meta": {"api-version": "1.1"}, "files": files}).encode()
                ctype = "application/vnd.pypi.simple.v1+json"
            else:
                body, ctype = data, "application/octet-stream"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/simple", data
    httpd.shutdown()
    httpd.server_close()


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINEHOUSE_", "OLLAMA_"))}
    env.update(
        ENGINEHOUSE_HOME=str(tmp_path / "home"),
        ENGINEHOUSE_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT),
        **extra,
    )
    return env


def run_cli(args: list[str], env: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess[str]:
    """``enginehouse ARGS`` with stdout and stderr on pipes; ``prelude`` runs first (to re-pin a fake)."""
    code = (
        f"{prelude}\nimport sys\nfrom enginehouse.cli.main import main\nsys.argv = ['enginehouse', *{args!r}]"
    )
    code += "\nmain()"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_engines_install_on_a_pipe_prints_each_stage(tmp_path: Path, index: tuple[str, bytes]) -> None:
    url, data = index
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "cmake").write_text(FAKE_CMAKE)
    (bindir / "cmake").chmod(0o755)
    env = cli_env(tmp_path, ENGINEHOUSE_PYPI_INDEX=url, PATH=f"{bindir}:/usr/bin:/bin")
    digest = hashlib.sha256(data).hexdigest()
    pin = f"import enginehouse.engines.llama_install as li; li.SDIST_SHA256 = {digest!r}"
    done = run_cli(["engines", "install", "llama-server"], env, prelude=pin)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert not ANSI_OR_CR.search(done.stderr), done.stderr  # lines, not a redrawn bar
    for label in ("Downloading llama.cpp source", "Extracting", "Configuring (cmake)"):
        assert any(line.startswith(f"{label}: done (") for line in lines), lines
    compiling = [line for line in lines if line.startswith("Compiling llama-server, rpc-server: ")]
    assert compiling[0] == "Compiling llama-server, rpc-server: started"
    assert [line.split(": ")[1].split(" ")[0] for line in compiling[1:-1]] == [
        f"{p}%" for p in range(10, 100, 10)
    ]
    assert compiling[-1].startswith("Compiling llama-server, rpc-server: done (")
    assert lines[-1].startswith("llama-server 0 (fake) and rpc-server installed in ")


def test_pull_on_a_pipe_prints_lines(tmp_path: Path, bundled_gguf: Path) -> None:
    with FakeRegistry(tmp_path / "registry") as reg:
        reg.add_model("library", "tiny", "latest", bundled_gguf)
        done = run_cli(["pull", "--insecure", reg.name("library", "tiny", "latest")], cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert not ANSI_OR_CR.search(done.stderr), done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "pulling manifest"
    model = [line for line in lines if re.match(r"pulling [0-9a-f]{12}: .*MB", line)]
    assert re.fullmatch(r"pulling [0-9a-f]{12}: done \(\d+s, \d+\.\d MB\)", model[-1]), lines
    assert lines[-2] == "success" and lines[-1].startswith(
        f"pulled {reg.name('library', 'tiny', 'latest')} ("
    )
