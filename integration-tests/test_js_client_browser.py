"""The JavaScript client (clients/js, imported as an ES module by a tiny page) in Debian's
Chromium against real processes: Redis, a gateway and the sample worker. Requests, pushes,
$error codes, timeouts and an application's close code; a gateway restarted mid-session
(1012, then a new process on the same port); a network cut (a TCP proxy that resets both
sides) and a silent one (the proxy drops what the gateway sends: the heartbeat notices).
Session resume is off in these tests (WSQ_RESUME_WINDOW_S=0): pushes sent while disconnected are
lost, so none is expected; but in the last one, where a session is resumed after a network cut and
what was pushed meanwhile arrives once, in order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser_harness import HAVE_PLAYWRIGHT, launch_chromium, start_again
from system_harness import GatewayProcess, RedisTarget, StartGateway, StartWorker

from wsq_devkit import ManagedProcess, TcpProxy, wait_until
from wsq_devkit.static import CLIENT_JS, CLIENT_JS_PREFIX, serve_static
from wsq_worker import Publisher

if HAVE_PLAYWRIGHT:
    from playwright.sync_api import Browser, Page

# the client and the browser, not Redis: once is enough
pytestmark = [pytest.mark.single_redis, pytest.mark.browser]

PAGE = Path(__file__).resolve().parent / "js_client_page"
DRAIN_S = 4.0
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


@pytest.fixture
def page_base() -> Iterator[str]:
    server = serve_static({"/": PAGE, CLIENT_JS_PREFIX: CLIENT_JS})
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@dataclass
class Stack:
    gateway: GatewayProcess
    page_base: str


@pytest.fixture
def stack(start_gateway: StartGateway, start_worker: StartWorker, page_base: str) -> Stack:
    gateway = start_gateway(WSQ_DRAIN_S=str(DRAIN_S))
    start_worker()
    return Stack(gateway, page_base)


@pytest.fixture
def open_page(browser: Browser, stack: Stack) -> Iterator[Callable[..., Page]]:
    """Opens the test page, its client connecting to ``ws_url``, in a browser context of its
    own; returns once the client is open. No uncaught JavaScript error may happen."""
    contexts = []
    errors: list[str] = []

    def open_(ws_url: str, query: str = "") -> Page:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{stack.page_base}?gateway={ws_url}{query}")
        wait_open(page)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == [], "JavaScript errors in the page"


def wait_open(page: Page, other_than: str | None = None) -> str:
    """Waits until the page's client is open (on a connection other than ``other_than``); its id."""
    page.wait_for_function(
        "(old) => wsq.client.state === 'open' && wsq.client.connectionId !== old",
        arg=other_than,
        timeout=WAIT_MS,
    )
    connection_id: str = page.evaluate("wsq.client.connectionId")
    return connection_id


def js(page: Page, expression: str) -> Any:
    """Evaluates ``expression`` (awaited) in the page, where ``wsq`` holds the client."""
    return page.evaluate(f"async () => {expression}")


def settle(page: Page, call: str) -> dict[str, Any]:
    """How a promise-returning call on the client ends: {ok, value} or {ok: false, code, sent, ...}."""
    result: dict[str, Any] = js(page, f"await wsq.settle(wsq.client.{call})")
    return result


def events_since_open(page: Page) -> list[list[Any]]:
    """The client's events after its first $open."""
    events: list[list[Any]] = js(page, "wsq.events")
    names = [name for name, _ in events]
    return events[names.index("$open") + 1 :]


def assert_reconnected(events: list[list[Any]], code: int) -> None:
    """$closed (code, will reconnect), $reconnecting, $connecting, then any failed attempts
    ($closed, $reconnecting, $connecting again), then $open: in that order, nothing else."""
    names = [name for name, _ in events]
    assert names[:3] == ["$closed", "$reconnecting", "$connecting"], events
    assert names[-1] == "$open", events
    assert names.count("$open") == 1, events
    assert events[0][1] == {"code": code, "reason": events[0][1]["reason"], "willReconnect": True}, events
    cycle = ["$closed", "$reconnecting", "$connecting"]
    assert names[:-1] == cycle * (len(names[:-1]) // 3), events
    attempts = [payload["attempt"] for name, payload in events if name == "$reconnecting"]
    assert attempts == list(range(1, len(attempts) + 1)), events
    assert all(payload["willReconnect"] for name, payload in events if name == "$closed"), events


# ---- tests --------------------------------------------------------------------------------------


def test_requests_pushes_errors_and_timeouts(
    stack: Stack, open_page: Callable[..., Page], redis_target: RedisTarget, key_prefix: str
) -> None:
    page = open_page(stack.gateway.ws_url)
    connection_id = js(page, "wsq.client.connectionId")
    assert connection_id.startswith(f"{stack.gateway.node_id}.")
    # the worker's on_connect push, received through on("*")
    page.wait_for_function("wsq.pushes.some(([action]) => action === 'welcome')", timeout=WAIT_MS)
    assert js(page, "wsq.pushes.find(([a]) => a === 'welcome')[1]") == {"connection_id": connection_id}

    assert settle(page, "request('echo', {text: 'héllo', n: [1, 2]})") == {
        "ok": True,
        "value": {"text": "héllo", "n": [1, 2]},
    }
    # a reply and two pushes: the pushes reach on() in order
    assert settle(page, "request('push_twice')") == {"ok": True, "value": "done"}
    page.wait_for_function("wsq.pushes.filter(([a]) => a === 'pushed').length === 2", timeout=WAIT_MS)
    assert js(page, "wsq.pushes.filter(([a]) => a === 'pushed').map(([, d]) => d)") == [1, 2]
    # ten at once, answered in any order, each to its own promise
    replies = js(page, "await Promise.all([...Array(10).keys()].map((n) => wsq.client.request('echo', n)))")
    assert replies == list(range(10))

    unknown = settle(page, "request('no_such_action', 1)")
    assert unknown["ok"] is False
    assert unknown["name"] == "WsqError"
    assert unknown["code"] == "unknown_action"
    assert unknown["sent"] is True
    failing = settle(page, "request('fail')")
    assert (failing["code"], failing["outcomeUnknown"]) == ("handler_error", False)

    timed_out = settle(page, "request('slow_async', 2, {timeout: 300})")
    assert (timed_out["code"], timed_out["sent"], timed_out["outcomeUnknown"]) == ("timeout", True, True)
    assert settle(page, "ping()")["ok"] is True
    assert js(page, "wsq.client.state") == "open", "a timeout leaves the connection as it is"
    # the slow reply comes later and is ignored; the next request is answered as usual
    assert settle(page, "request('echo', 'after')") == {"ok": True, "value": "after"}
    # a send() gets no reply, but its failure comes as a $error event
    assert js(page, "wsq.client.send('no_such_action', 1)") is True
    page.wait_for_function("wsq.events.some(([n, e]) => n === '$error' && e.code === 'unknown_action')")

    # The application closes the connection (4000-4999 are its own): the client stays closed.
    with Publisher(redis_target.url, key_prefix, redis_cluster=redis_target.cluster) as publisher:
        publisher.to(connection_id).disconnect(code=4000, reason="kicked")
    page.wait_for_function("wsq.client.state === 'closed'", timeout=WAIT_MS)
    assert events_since_open(page)[-1] == [
        "$closed",
        {"code": 4000, "reason": "kicked", "willReconnect": False},
    ]
    assert settle(page, "request('echo', 1)")["code"] == "closed"


def test_gateway_restart_mid_session(
    stack: Stack, open_page: Callable[..., Page], processes: list[ManagedProcess]
) -> None:
    page = open_page(stack.gateway.ws_url)
    first = js(page, "wsq.client.connectionId")
    js(page, "void (wsq.inFlight.slow = wsq.settle(wsq.client.request('slow_async', 3)))")

    # SIGTERM: the gateway drains, closing the socket with 1012, and exits
    assert stack.gateway.process.stop() == 0, stack.gateway.process.output()
    page.wait_for_function("wsq.client.state !== 'open'", timeout=WAIT_MS)
    lost = js(page, "await wsq.inFlight.slow")
    assert (lost["code"], lost["sent"], lost["outcomeUnknown"]) == ("connection_lost", True, True), lost
    # made while disconnected: waits for the connection (the offline queue), then is answered
    js(
        page,
        "void (wsq.inFlight.queued = wsq.settle(wsq.client.request('echo', 'queued', {timeout: 30000})))",
    )

    start_again(stack.gateway, processes)
    second = wait_open(page, other_than=first)
    assert second != first
    assert second.startswith(f"{stack.gateway.node_id}.")
    assert js(page, "await wsq.inFlight.queued") == {"ok": True, "value": "queued"}
    assert settle(page, "request('echo', 'again')") == {"ok": True, "value": "again"}
    assert_reconnected(events_since_open(page), 1012)


def test_network_cut(stack: Stack, open_page: Callable[..., Page]) -> None:
    with TcpProxy(stack.gateway.port) as proxy:
        page = open_page(f"ws://127.0.0.1:{proxy.port}{stack.gateway.path}", "&heartbeat=1500")
        first = js(page, "wsq.client.connectionId")
        js(page, "void (wsq.inFlight.slow = wsq.settle(wsq.client.request('slow_async', 2)))")

        # Both TCP connections reset, new ones refused for a second: no close frame anywhere.
        proxy.cut(1.0)
        lost = js(page, "await wsq.inFlight.slow")
        assert (lost["code"], lost["sent"], lost["outcomeUnknown"]) == ("connection_lost", True, True), lost
        second = wait_open(page, other_than=first)
        assert settle(page, "request('echo', 'through the proxy')") == {
            "ok": True,
            "value": "through the proxy",
        }
        assert settle(page, "request('whoami')")["value"]["connection_id"] == second
        assert_reconnected(events_since_open(page), 1006)

        # A silent network: no reset, nothing arrives any more. Only the client's heartbeat
        # (a $ping after 1.5 s of silence, no $pong within 1.5 s) can tell; it drops the socket.
        js(page, "void (wsq.events.length = 0)")
        proxy.drop_replies()
        page.wait_for_function("wsq.client.state !== 'open'", timeout=WAIT_MS)
        assert js(page, "wsq.events[0]") == [
            "$closed",
            {"code": 1006, "reason": "heartbeat timeout", "willReconnect": True},
        ]
        proxy.cut(0)  # the network is back (the proxy forwards answers again)
        third = wait_open(page, other_than=second)
        assert settle(page, "request('whoami')")["value"]["connection_id"] == third


def test_network_cut_with_session_resume(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    browser: Browser,
    page_base: str,
    redis_target: RedisTarget,
    key_prefix: str,
) -> None:
    gateway = start_gateway(WSQ_RESUME_WINDOW_S="30")
    start_worker()
    context = browser.new_context()
    errors: list[str] = []
    with (
        TcpProxy(gateway.port) as proxy,
        Publisher(redis_target.url, key_prefix, redis_cluster=redis_target.cluster) as publisher,
    ):
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{page_base}?gateway=ws://127.0.0.1:{proxy.port}{gateway.path}")
        first = wait_open(page)
        assert js(page, "wsq.events.at(-1)")[1]["resumed"] is False
        assert settle(page, "request('join_room', 'deck')") == {"ok": True, "value": True}
        publisher.to(first).send("n", 0)
        page.wait_for_function("wsq.pushes.some(([action]) => action === 'n')", timeout=WAIT_MS)
        js(page, "void (wsq.inFlight.slow = wsq.settle(wsq.client.request('slow_async', 1)))")
        wait_until(lambda: gateway.frames_accepted("slow_async") >= 1, message="the request queued")

        proxy.cut(1.0)  # both TCP connections reset, new ones refused for a second: no close frame
        page.wait_for_function("wsq.client.state !== 'open'", timeout=WAIT_MS)
        for number in range(1, 7):  # while the page is away: to its connection, to its group
            (publisher.to(first) if number % 2 else publisher.to_group("deck")).send("n", number)

        page.wait_for_function(
            "wsq.events.some(([name, payload]) => name === '$open' && payload.resumed)", timeout=WAIT_MS
        )
        opened = [payload for name, payload in js(page, "wsq.events") if name == "$open"]
        assert (opened[-1]["resumed"], opened[-1]["recovered"]) == (True, True), opened
        assert js(page, "wsq.client.connectionId") == first
        assert js(page, "await wsq.inFlight.slow") == {"ok": True, "value": "slept"}
        publisher.to_group("deck").send("n", 7)  # the group kept its member
        page.wait_for_function("wsq.pushes.filter(([action]) => action === 'n').length >= 8", timeout=WAIT_MS)
        assert [data for action, data in js(page, "wsq.pushes") if action == "n"] == list(range(8))
        assert settle(page, "request('whoami')")["value"]["connection_id"] == first
    context.close()
    assert errors == [], "JavaScript errors in the page"
