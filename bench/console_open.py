"""Keep the console open in a headless Chromium while a benchmark runs, as a person watching it would.

    .venv/bin/python -m bench.console_open http://127.0.0.1:PORT [VIEWS]

Opens ``/ui`` and cycles through the views that poll the most (default ``loaded,metrics``: the runners'
memory and slots, and the gateway's /metrics), one every 10 s, until terminated. The page polls at most
once every 2 s while visible; this is what ``bench.gateway_overhead --with-console`` leaves running
beside the measurement to show what an open console costs the hot path.
"""

from __future__ import annotations

import shutil
import signal
import sys

from playwright.sync_api import sync_playwright


def main() -> int:
    base, views = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "loaded,metrics").split(",")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is missing: run scripts/setup.sh")
    stop = False

    def end(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, end)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page()
        page.goto(f"{base}/ui#{views[0]}")
        turn = 0
        while not stop:
            page.wait_for_timeout(10_000)
            turn += 1
            page.goto(f"{base}/ui#{views[turn % len(views)]}")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
