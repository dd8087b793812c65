"""The console (``/ui``) in a real headless Chromium (Debian's ``chromium``, driven by Playwright): a real
gateway with a real llama-server behind it, a local fake registry to pull from, ``enginehouse bench`` and
``enginehouse stop`` as typed. ENGINEHOUSE_SCREENSHOTS=1 also writes docs/img/console-*.png."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL, make_config
from tests.fakes.registry import FakeRegistry

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = os.environ.get("ENGINEHOUSE_SCREENSHOTS") == "1"
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
FOREIGN = "evil.test"  # resolved to 127.0.0.1 by the browser only: a DNS-rebinding page
KEY = "console-test-key"
LONG = 180_000  # ms: a first load or a pull on a busy 2-core machine


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.fail("chromium is missing: run scripts/setup.sh (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=[f"--host-resolver-rules=MAP {FOREIGN} 127.0.0.1"]
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, bundled_gguf: Path) -> Iterator[FakeRegistry]:
    with FakeRegistry(tmp_path_factory.mktemp("registry")) as reg:
        reg.add_model("library", "tiny", "latest", bundled_gguf, template=None, params={"temperature": 0})
        yield reg


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(make_config(tmp_path_factory.mktemp("console"), llama_server_bin)) as srv:
        yield srv


class Console:
    """A page on the console that collects the browser's console errors and uncaught exceptions."""

    def __init__(self, browser: Browser, base_url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 860})
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.base_url = base_url
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(msg.text)

    def open(self, view: str) -> Page:
        if self.page.url.startswith(self.base_url + "/ui"):
            self.page.evaluate("view => { location.hash = view }", view)
        else:
            self.page.goto(f"{self.base_url}/ui#{view}")
        expect(self.page.locator(f"#view-{view}")).to_be_visible()
        return self.page

    def shot(self, name: str) -> None:
        if SHOTS:
            IMG.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(IMG / f"console-{name}.png"))


@pytest.fixture
def ui(browser: Browser, server: BackgroundServer) -> Iterator[Console]:
    console = Console(browser, server.base_url)
    yield console
    errors = console.errors
    console.context.close()
    assert errors == [], errors


def cli(server: BackgroundServer, *args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ENGINEHOUSE_HOST": server.base_url.removeprefix("http://"),
        "ENGINEHOUSE_HOME": str(server.gateway.config.home),
    }
    return subprocess.run(
        [sys.executable, "-m", "enginehouse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_the_page_is_served_from_the_package_with_a_strict_policy(server: BackgroundServer) -> None:
    for path in ("/ui", "/ui/", "/ui/app.js", "/ui/app.css"):
        resp = httpx.get(server.base_url + path)
        assert resp.status_code == 200, path
        assert "script-src 'self'" in resp.headers["content-security-policy"]
        assert resp.headers["x-frame-options"] == "DENY"
    assert httpx.get(server.base_url + "/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(server.base_url + "/ui/../api/tags").status_code in (200, 404)  # normalised, no escape
    assert httpx.get(server.base_url + "/ui/nope.js").status_code == 404
    page = httpx.get(server.base_url + "/ui").text
    assert "http://" not in page and "https://" not in page  # nothing from a CDN


def test_page_loads_with_no_console_errors(ui: Console) -> None:
    page = ui.open("models")
    expect(page.locator(f'#models-table tr[data-model="{MODEL}"]')).to_be_visible()
    row = page.locator(f'#models-table tr[data-model="{MODEL}"]')
    expect(row).to_contain_text("gguf")
    expect(row).to_contain_text("llama-server")  # the engine it would run on
    row.click()
    expect(page.locator("#model-detail")).to_contain_text("completion")  # capabilities from /api/show
    expect(page.locator("#model-detail pre.modelfile")).to_contain_text("FROM")
    for view in ("loaded", "metrics", "chat", "logs", "routing", "bench", "models"):
        ui.open(view)
        page.wait_for_timeout(300)
    expect(page.locator("#notice")).to_be_hidden()


def test_pull_shows_progress_then_copy_and_delete(ui: Console, registry: FakeRegistry) -> None:
    name = registry.name("library", "tiny", "latest")
    page = ui.open("models")
    page.fill("#pull-name", name)
    page.check("#pull-insecure")
    page.click("#pull-form button[type=submit]")
    expect(page.locator("#pull-status")).to_have_text("success", timeout=LONG)
    bars = page.locator("#pull-layers progress")
    sizes = [(float(b.get_attribute("max") or 0), float(b.evaluate("b => b.value"))) for b in bars.all()]
    assert any(total > 90e6 and done == total for total, done in sizes), sizes  # the GGUF, whole
    assert page.locator("#pull-layers").inner_text().count("MiB") >= 2
    expect(page.locator(f'#models-table tr[data-model="{name}"]')).to_be_visible()
    page.locator(f'#models-table tr[data-model="{name}"]').click()
    expect(page.locator("#model-detail h3")).to_have_text(name)
    ui.shot("models")

    page.fill("#copy-name", "tiny-copy")
    page.click("#copy-form button[type=submit]")
    expect(page.locator('#models-table tr[data-model="tiny-copy:latest"]')).to_be_visible()
    page.locator('#models-table tr[data-model="tiny-copy:latest"]').click()
    expect(page.locator("#model-detail h3")).to_have_text("tiny-copy:latest")
    page.once("dialog", lambda d: d.dismiss())  # the confirmation: no
    page.click("#delete-model")
    page.wait_for_timeout(500)
    expect(page.locator('#models-table tr[data-model="tiny-copy:latest"]')).to_be_visible()
    page.once("dialog", lambda d: d.accept())
    page.click("#delete-model")
    expect(page.locator('#models-table tr[data-model="tiny-copy:latest"]')).to_have_count(0)
    expect(page.locator(f'#models-table tr[data-model="{name}"]')).to_be_visible()  # the original stays


def _count_text_changes(page: Page) -> None:
    page.evaluate(
        """() => {
            window.__changes = 0;
            const inAnswer = (r) => r.target.closest && r.target.closest('.msg.assistant');
            new MutationObserver((records) => {
                for (const r of records) if (inAnswer(r)) window.__changes++;
            }).observe(document.querySelector('#chat-log'),
                       {subtree: true, childList: true, characterData: true});
        }"""
    )


def _send(page: Page, text: str) -> Any:
    before = page.locator(".msg.assistant").count()
    page.fill("#chat-input", text)
    page.click("#chat-send")
    answer = page.locator(".msg.assistant").nth(before)
    expect(answer.locator("small")).to_be_attached(timeout=LONG)  # the stats line: the stream ended
    expect(page.locator("#chat-send")).to_be_enabled(timeout=LONG)
    return answer


def test_chat_streams_an_answer_on_both_doors_and_the_router(ui: Console) -> None:
    page = ui.open("chat")
    expect(page.locator(f'#chat-model option[value="{MODEL}"]')).to_have_count(1)
    page.select_option("#chat-model", MODEL)
    page.select_option("#chat-door", "ollama")
    page.fill("#chat-max", "16")
    _count_text_changes(page)
    answer = _send(page, "What is the capital of France?")
    text = answer.locator(".text").inner_text()
    assert text.strip() and "error" not in (answer.get_attribute("class") or "")
    assert page.evaluate("window.__changes") >= 3  # the answer arrived in pieces, not at once
    expect(answer.locator("small")).to_contain_text("tok/s")
    expect(page.locator("#route-headers")).to_contain_text(f"answered by {MODEL}")

    page.select_option("#chat-model", "auto")
    page.select_option("#chat-door", "openai")
    answer = _send(page, "Write a Python function that reverses a string.")
    assert answer.locator(".text").inner_text().strip()
    expect(page.locator("#route-headers")).to_contain_text("route auto/code")
    expect(page.locator("#route-headers")).to_contain_text(f"answered by {MODEL}")
    ui.shot("chat")


def test_metrics_charts_and_bench_reports(ui: Console, server: BackgroundServer) -> None:
    page = ui.open("metrics")
    page.wait_for_timeout(2500)  # a first sample before the load
    report = server.gateway.config.home / "bench" / "smoke.json"
    report.parent.mkdir(exist_ok=True)
    result = cli(
        server,
        "bench",
        *("-t", f"ollama-door:ollama={server.base_url}", "-t", f"openai-door:openai={server.base_url}/v1"),
        *("-m", MODEL, "-c", "1,2", "-n", "2", "--warmup", "0", "--input-len", "8", "--output-len", "8"),
        *("--json", str(report)),
    )
    assert result.returncode == 0, result.stderr
    page.wait_for_timeout(2500)  # a sample after it
    expect(page.locator("#charts .legend")).to_contain_text(MODEL)
    expect(page.locator("#metric-totals")).to_contain_text(f"{MODEL}:")
    lines = page.locator("#charts svg.chart path")
    assert lines.count() >= 1  # at least the tokens/s line was drawn
    ui.shot("metrics")

    page = ui.open("bench")
    row = page.locator('#bench-table tr[data-report="smoke.json"]')
    expect(row).to_contain_text(MODEL)
    row.click()
    expect(page.locator("#bench-report svg.chart")).to_have_count(2)
    expect(page.locator("#bench-report .legend")).to_contain_text("ollama-door")
    expect(page.locator("#bench-report table")).to_contain_text("openai-door")
    ui.shot("bench")


def test_loaded_model_against_the_budget_then_stopped(ui: Console, server: BackgroundServer) -> None:
    httpx.post(f"{server.base_url}/api/generate", json={"model": MODEL, "keep_alive": "7m"}, timeout=120)
    page = ui.open("loaded")
    card = page.locator(f'.runner[data-model="{MODEL}"]')
    expect(card).to_be_visible()
    expect(card).to_contain_text("llama-server")
    expect(card.locator(".countdown")).to_contain_text("unloads in 6 min")
    expect(card.locator(".slot")).to_have_count(2)  # num_parallel 2
    expect(page.locator("#budget-facts")).to_contain_text("limit")
    assert page.locator("#budget svg.bar rect").count() >= 2  # the background and this runner
    ui.shot("loaded")
    result = cli(server, "stop", MODEL, timeout=120)
    assert result.returncode == 0, result.stderr
    expect(page.locator("#nothing-loaded")).to_be_visible(timeout=10_000)
    expect(card).to_have_count(0)


def test_runner_logs_are_tailed(ui: Console, server: BackgroundServer) -> None:
    page = ui.open("logs")
    expect(page.locator('#log-name option[value="smollm2_135m"]')).to_have_count(1)
    page.select_option("#log-name", "smollm2_135m")
    expect(page.locator("#log-lines")).to_contain_text("enginehouse: starting", timeout=10_000)
    text = page.locator("#log-lines").inner_text()
    assert str(server.gateway.config.home) not in text  # server paths are redacted
    before = text.count("enginehouse: starting")
    httpx.post(f"{server.base_url}/api/generate", json={"model": MODEL, "keep_alive": "1m"}, timeout=120)
    expect(page.locator("#log-lines")).to_contain_text("enginehouse: starting", timeout=10_000)
    page.wait_for_function(
        "n => document.querySelector('#log-lines').textContent.split('enginehouse: starting').length - 1 > n",
        arg=before,
        timeout=15_000,
    )  # the new run's lines were appended, not re-read
    ui.shot("logs")


def test_routing_decisions_with_their_reasons(ui: Console) -> None:
    page = ui.open("routing")
    expect(page.locator("#route-table tbody")).to_contain_text("auto/code")
    page.fill("#route-prompt", "What is the derivative of x^2?")
    page.click("#route-form button[type=submit]")
    expect(page.locator("#route-answer")).to_contain_text("auto/math")
    expect(page.locator("#route-table tbody tr").first).to_contain_text("auto/math")
    ui.shot("routing")


def test_a_foreign_page_and_a_foreign_host_are_refused(browser: Browser, server: BackgroundServer) -> None:
    port = server.base_url.rsplit(":", 1)[1]
    context = browser.new_context()
    try:
        page = context.new_page()
        # DNS rebinding: a name the attacker controls now points at 127.0.0.1
        resp = page.goto(f"http://{FOREIGN}:{port}/ui")
        assert resp is not None and resp.status == 403
        assert "host not allowed" in page.content()
        # A page on another origin calling the API: refused, so the browser hands it nothing
        page.route(
            "http://pages.example/**",
            lambda route: route.fulfill(status=200, content_type="text/html", body="<p>elsewhere</p>"),
        )
        page.goto("http://pages.example/")
        outcome = page.evaluate(
            """async (base) => {
                const out = {};
                for (const [name, init] of [
                    ["tags", {}],
                    ["pull", {method: "POST", headers: {"Content-Type": "application/json"},
                              body: JSON.stringify({model: "library/tiny"})}],
                ]) {
                    const path = name === "tags" ? "/api/tags" : "/api/pull";
                    try { out[name] = (await fetch(base + path, init)).status; }
                    catch (e) { out[name] = "refused"; }
                }
                return out;
            }""",
            server.base_url,
        )
        assert outcome == {"tags": "refused", "pull": "refused"}
    finally:
        context.close()
    answer = httpx.get(f"{server.base_url}/api/tags", headers={"Origin": "http://pages.example"})
    assert answer.status_code == 403 and "origin not allowed" in answer.text


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path) -> Iterator[BackgroundServer]:
    config = make_config(tmp_path_factory.mktemp("console-key"), llama_server_bin, api_key=KEY)
    with BackgroundServer(config) as srv:
        yield srv


def test_a_wrong_key_is_refused_with_a_clear_message(browser: Browser, keyed: BackgroundServer) -> None:
    console = Console(browser, keyed.base_url)
    try:
        page = console.open("models")
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#key-message")).to_contain_text("wants an API key")
        page.fill("#key-input", "not-the-key")
        page.click("#key-form button[type=submit]")
        expect(page.locator("#key-message")).to_contain_text("refused this key")
        expect(dialog).to_be_visible()
        expect(page.locator("#notice")).to_contain_text("API key refused")
        page.fill("#key-input", KEY)
        page.click("#key-form button[type=submit]")
        expect(dialog).to_be_hidden()
        expect(page.locator(f'#models-table tr[data-model="{MODEL}"]')).to_be_visible()
        expect(page.locator("#notice")).to_be_hidden()
        page.reload()  # asked once: the tab keeps it
        expect(page.locator(f'#models-table tr[data-model="{MODEL}"]')).to_be_visible()
        expect(dialog).to_be_hidden()
    finally:
        console.context.close()
    assert all("401" in e for e in console.errors), console.errors  # the refused calls, nothing else
