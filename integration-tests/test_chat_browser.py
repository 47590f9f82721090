"""The chat example end to end: Redis, a gateway and the chat worker as real processes,
the page in Debian's Chromium (driven by Playwright, never a downloaded browser), and the
one-command demo (``examples/chat/run.py``) as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_harness import HAVE_PLAYWRIGHT, launch_chromium, start_again  # integration-tests/
from system_harness import GatewayProcess, StartWorker

from wsq_devkit import ManagedProcess, free_port, wait_until
from wsq_devkit.static import CLIENT_JS, CLIENT_JS_PREFIX, serve_static

# the page and the JS client, not Redis: once is enough (the chat on a cluster: test_chat_workers.py)
pytestmark = pytest.mark.single_redis

if HAVE_PLAYWRIGHT:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

ROOT = Path(__file__).resolve().parents[1]
CHAT = ROOT / "examples" / "chat"
DRAIN_S = 4.0
CONNECTION_ID = re.compile(r"^[A-Za-z0-9_.:-]+\.[A-Za-z0-9_-]{22}$")
SCREENSHOT = Path("/tmp/wsq-chat.png")


# ---- the stack: gateway (conftest's start_gateway) + chat worker + page ------------------------


@dataclass
class Chat:
    gateway: GatewayProcess
    page_url: str


@pytest.fixture
def chat_worker(start_worker: StartWorker) -> ManagedProcess:
    return start_worker("examples.chat.worker:worker", cwd=ROOT)


@pytest.fixture
def page_server() -> Iterator[str]:
    """examples/chat/static, and the JavaScript client at /wsq-client/, over HTTP on a free port
    (as run.py serves them); the base URL."""
    server = serve_static({"/": CHAT / "static", CLIENT_JS_PREFIX: CLIENT_JS})
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def chat(start_gateway: Callable[..., GatewayProcess], chat_worker: ManagedProcess, page_server: str) -> Chat:
    # A drain budget well under ManagedProcess.stop()'s 10 s: a drain that overruns it logs
    # every task it still waits for (server.py) before a test stopping the gateway gives up.
    gateway = start_gateway(WSQ_DRAIN_S=str(DRAIN_S))
    return Chat(gateway, f"{page_server}?gateway={gateway.ws_url}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


@pytest.fixture
def open_chat(browser: Browser) -> Iterator[Callable[[str], Page]]:
    """Opens the chat page in a browser context of its own (one client each), waits until connected."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []  # uncaught exceptions in the page's JavaScript

    def open_page(url: str) -> Page:
        contexts.append(browser.new_context())
        page = contexts[-1].new_page()
        page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
        page.goto(url)
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        expect(page.locator("#connection-id")).to_have_text(CONNECTION_ID)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert errors == [], "JavaScript errors in the chat page"


def set_name(page: Page, name: str) -> None:
    page.fill("#name", name)
    page.click("#name-submit")
    expect(page.locator("#name-submit")).to_have_text("Change name")


def messages(page: Page, sender: str, text: str) -> Locator:
    return (
        page.locator("#messages li[data-kind=message]")
        .filter(has=page.locator(".from", has_text=re.compile(f"^{re.escape(sender)}$")))
        .filter(has=page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$")))
    )


def system_lines(page: Page, text: str) -> Locator:
    return page.locator("#messages li[data-kind=system] .text", has_text=re.compile(f"^{re.escape(text)}$"))


# ---- browser tests -----------------------------------------------------------------------------


@pytest.mark.browser
def test_two_pages_chat(chat: Chat, open_chat: Callable[[str], Page]) -> None:
    ada = open_chat(chat.page_url)
    grace = open_chat(chat.page_url)
    assert ada.text_content("#connection-id") != grace.text_content("#connection-id")
    expect(ada.locator("#messages li[data-kind=system]").first).to_contain_text("Welcome!")

    set_name(ada, "Ada")
    set_name(grace, "Grace")
    expect(system_lines(grace, "Ada joined")).to_have_count(1)
    expect(system_lines(ada, "Grace joined")).to_have_count(1)

    ada.fill("#text", "Hello, <b>Grace</b>!")
    ada.press("#text", "Enter")
    for page in (grace, ada):  # a broadcast reaches the sender too
        expect(messages(page, "Ada", "Hello, <b>Grace</b>!")).to_have_count(1)
    # the sender's page marks it as its own (its connection id came with it), the others don't
    expect(messages(ada, "Ada", "Hello, <b>Grace</b>!")).to_have_class("message own")
    expect(messages(grace, "Ada", "Hello, <b>Grace</b>!")).to_have_class("message")
    expect(ada.locator("#text")).to_have_value("")  # cleared once the worker said ok
    expect(ada.locator("#notice")).to_be_hidden()

    grace.fill("#text", "Hi Ada")
    grace.click("#send")
    expect(messages(ada, "Grace", "Hi Ada")).to_have_count(1)

    # Bad input: the worker's {"ok": false, "error": ...} reply is shown, nothing is broadcast.
    ada.fill("#text", "   ")
    ada.click("#send")
    expect(ada.locator("#notice")).to_be_visible()
    expect(ada.locator("#notice")).to_have_text("a message is 1 to 500 characters")
    grace.fill("#name", "")
    grace.click("#name-submit")
    expect(grace.locator("#notice")).to_have_text("a name is 1 to 32 characters")

    # An $error answer (the worker has no such action) rejects the request with its code.
    code = ada.evaluate("wsqChat.request('no_such_action', null).then(() => 'resolved', (e) => e.code)")
    assert code == "unknown_action"

    # Renaming is announced; a good message clears the notice.
    set_name(grace, "Grace H.")
    expect(system_lines(ada, "Grace is now Grace H.")).to_have_count(1)
    ada.fill("#text", "Nice name")
    ada.press("#text", "Enter")
    expect(messages(grace, "Ada", "Nice name")).to_have_count(1)
    expect(ada.locator("#notice")).to_be_hidden()
    assert messages(grace, "Ada", "   ").count() == 0

    ada.set_viewport_size({"width": 900, "height": 760})
    ada.screenshot(path=str(SCREENSHOT), full_page=True)

    # Closing a page disconnects it; the worker tells the others who left.
    grace.context.close()
    expect(system_lines(ada, "Grace H. left")).to_have_count(1)


@pytest.mark.browser
def test_page_reconnects_after_gateway_restart(
    chat: Chat, open_chat: Callable[[str], Page], processes: list[ManagedProcess]
) -> None:
    page = open_chat(chat.page_url)
    first_id = page.text_content("#connection-id")
    set_name(page, "Ada")
    expect(system_lines(page, "Ada joined")).to_have_count(1)

    # SIGTERM: the gateway closes the socket with 1012 (service restart) and exits, within its drain
    assert chat.gateway.process.stop() == 0, chat.gateway.process.output()
    output = chat.gateway.process.output()
    assert "the drain took longer than WSQ_DRAIN_S" not in output, output  # it names what it waited for
    expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
    expect(page.locator("#status")).to_contain_text("Reconnecting…")
    expect(page.locator("#send")).to_be_disabled()
    start_again(chat.gateway, processes)

    status = page.locator("#status")
    expect(status).to_have_attribute("data-state", "connected", timeout=20_000)
    expect(page.locator("#connection-id")).not_to_have_text(first_id or "")
    expect(page.locator("#connection-id")).to_have_text(CONNECTION_ID)
    # The page sent its name again on the new connection: it is announced a second time.
    expect(system_lines(page, "Ada joined")).to_have_count(2)
    page.fill("#text", "back again")
    page.press("#text", "Enter")
    expect(messages(page, "Ada", "back again")).to_have_count(1)
    expect(messages(page, "Ada", "back again")).to_have_class("message own")  # from its new connection
    # A new connection (no session resume here): the pushes sent meanwhile are lost.
    expect(status).to_have_text("Reconnected (some messages may be missing)")


# ---- the one-command demo ----------------------------------------------------------------------


# What no clean stop may print: a traceback, or an error (structlog's console lines say
# "[error" or "[critical", its JSON lines "level": "error"; run.py says "run.py: error").
ERROR_LINE = re.compile(
    r'Traceback|\bERROR\b|\bCRITICAL\b|\[(error|critical)\b|"level": ?"(error|critical)"|run\.py: error'
)

WARNING_LINE = re.compile(r'\bWARNING\b|\[warning\b|"level": ?"warning"')


def _demo_env() -> dict[str, str]:
    """Our environment without WSQ_*: run.py starts its own embedded Redis."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WSQ_")}


def _demo(*args: str, output: Path) -> subprocess.Popen[bytes]:
    with output.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                str(CHAT / "run.py"),
                "--port",
                str(free_port()),
                "--gateway-port",
                str(free_port()),
                "--api-port",
                str(free_port()),
                *args,
            ],
            cwd=ROOT,
            env=_demo_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the test can tell when all of it is gone
        )


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if not _group_gone(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_demo_check(tmp_path: Path) -> None:
    output = tmp_path / "run.log"
    proc = _demo("--check", output=output)
    try:
        code = proc.wait(timeout=90)
        text = output.read_text(errors="replace")
        assert code == 0, text
        assert re.search(r"^OK: ", text, re.MULTILINE), text
        wait_until(lambda: _group_gone(proc.pid), timeout=10, message="every process of run.py --check gone")
    finally:
        _kill_group(proc)


@pytest.mark.browser
def test_demo_page_shows_live_stats_from_the_http_api(
    tmp_path: Path, open_chat: Callable[[str], Page]
) -> None:
    """The one-command demo: its page shows the gateway's stats (HTTP server API, asked by
    run.py with a key the browser never sees), this page's connection among them."""
    output = tmp_path / "run.log"
    proc = _demo(output=output)
    try:

        def printed_url() -> str | None:
            assert proc.poll() is None, output.read_text(errors="replace")
            found = re.search(r"Open (http://\S+)", output.read_text(errors="replace"))
            return found.group(1) if found else None

        url = wait_until(printed_url, timeout=60, message="run.py printing the address of the page")
        page = open_chat(url)
        expect(page.locator("#stats")).to_be_visible()
        expect(page.locator("#stats-gateways")).to_have_text("1")
        expect(page.locator("#stats-connections")).to_have_text("1")
        expect(page.locator("#stats-workers")).to_have_text("1")
        expect(page.locator("#stats-dead")).to_have_text("0")
        open_chat(url)
        expect(page.locator("#stats-connections")).to_have_text("2", timeout=10_000)  # refreshed
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        _kill_group(proc)


@pytest.mark.parametrize("ctrl_c", [True, False], ids=["ctrl-c", "sigterm"])
def test_demo_stops_cleanly(tmp_path: Path, ctrl_c: bool) -> None:
    output = tmp_path / "run.log"
    proc = _demo(output=output)
    try:

        def printed_url() -> str | None:
            assert proc.poll() is None, output.read_text(errors="replace")
            found = re.search(r"Open (http://\S+)", output.read_text(errors="replace"))
            return found.group(1) if found else None

        url = wait_until(printed_url, timeout=60, message="run.py printing the address of the page")
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert b"wsq chat" in resp.read()
        if ctrl_c:  # a terminal sends SIGINT to the whole foreground group: run.py and its children
            os.killpg(proc.pid, signal.SIGINT)
        else:  # a service manager stops run.py alone
            proc.terminate()
        code = proc.wait(timeout=30)
        text = output.read_text(errors="replace")
        assert code == 0, text
        # A clean stop says so, and nothing else: no traceback, no error or warning from anyone.
        # Each child has a process group of its own (Ctrl-C reaches run.py alone), so each
        # gets one SIGTERM, in order: the gateway drains, the worker stops, then Redis, which
        # neither of them loses midway.
        assert "run.py: stopping" in text, text
        bad = [line for line in text.splitlines() if ERROR_LINE.search(line) or WARNING_LINE.search(line)]
        assert not bad, text
        gateway_stopped = re.search(r"gateway \|.*\bstopped\b", text)
        worker_stopped = re.search(r"worker \|.*\bstopped\b", text)
        assert gateway_stopped, text
        assert worker_stopped, text
        assert gateway_stopped.start() < worker_stopped.start(), text
        # nothing of it is left: run.py's group, the gateway's port, the embedded Redis's port
        wait_until(lambda: _group_gone(proc.pid), timeout=10, message="every process of run.py gone")
        redis_port = re.search(r"redis\s+redis://127\.0\.0\.1:(\d+)/0 \(embedded\)", text)
        gateway_port = re.search(r"gateway\s+ws://127\.0\.0\.1:(\d+)/", text)
        assert redis_port, text
        assert gateway_port, text
        for port in (redis_port.group(1), gateway_port.group(1)):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", int(port)), timeout=2).close()
    finally:
        _kill_group(proc)
