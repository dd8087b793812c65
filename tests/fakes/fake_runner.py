"""A fake runner: a tiny HTTP server that behaves like llama-server where tests need it to misbehave.

Run as ``python fake_runner.py --port N [options]``; standard library only, so it starts fast.

    GET /health  503 {"error": {"code": 503, "message": "Loading model"}} during --load-seconds, then
                 200 {"status": "ok"}
    GET /pid     200 {"pid": <its pid>}
    GET /slots   200 [] (llama-server's main-loop probe); with --stall-slots-after F, after F seconds it
                 never answers while /health stays green, as llama-server's when its main loop is stuck
    GET /seen    200 {"authorization": [the Authorization header of each /slots request]}

Options: --load-seconds F; --exit-after F (exit with code 3 after F seconds: a crash); --fail-start
(print an error line like a real runner, exit 1 at once); --ignore-sigterm; --spawn-child (fork a
grandchild that sleeps, printing "child pid N", to prove the whole process group gets killed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--load-seconds", type=float, default=0.0)
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--fail-start", action="store_true")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--spawn-child", action="store_true")
    parser.add_argument("--stall-slots-after", type=float, default=None)
    args = parser.parse_args()
    started = time.monotonic()
    print(f"fake_runner: pid {os.getpid()} port {args.port}", flush=True)

    if args.fail_start:
        print("error: failed to load model 'x'", file=sys.stderr, flush=True)
        sys.exit(1)
    if args.spawn_child:
        child = os.fork()
        if child == 0:  # the grandchild: sleeps until its process group is killed
            time.sleep(120)
            os._exit(0)
        print(f"child pid {child}", flush=True)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:

        def on_sigterm(signum: int, frame: object) -> None:
            print("fake_runner: received SIGTERM, shutting down", flush=True)
            os._exit(0)

        signal.signal(signal.SIGTERM, on_sigterm)
    if args.exit_after is not None:

        def crash() -> None:
            print("fake_runner: crashing", flush=True)
            os._exit(3)

        threading.Timer(args.exit_after, crash).start()

    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                if time.monotonic() - started < args.load_seconds:
                    self._reply(503, {"error": {"code": 503, "message": "Loading model"}})
                else:
                    self._reply(200, {"status": "ok"})
            elif self.path == "/pid":
                self._reply(200, {"pid": os.getpid()})
            elif self.path == "/slots":
                seen.append(self.headers.get("Authorization"))
                stall = args.stall_slots_after
                if stall is not None and time.monotonic() - started >= stall:
                    threading.Event().wait()  # a stuck main loop: this thread never answers
                self._reply(200, [])
            elif self.path == "/seen":
                self._reply(200, {"authorization": seen})
            else:
                self._reply(404, {"error": {"code": 404, "message": "File Not Found"}})

        def _reply(self, status: int, body: dict | list) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # quiet: the health poll is chatty
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"fake_runner: listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
