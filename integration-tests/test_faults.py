"""Fault injection: each test breaks one thing for real and checks that every guarantee holds.

Faults: Redis stalled (SIGSTOP) longer than the gateway's Redis timeout, Redis stopped
(SIGTERM) and restarted from its append-only file, Redis killed (SIGKILL) and restarted
empty; a gateway killed; a worker killed mid-handler; clients vanishing by FIN, RST or
silence; a flood above every limit. As applies, each test checks that

- every frame with an id gets exactly one answer (a reply or an ``$error``), and a frame
  answered ``unavailable``, ``overloaded`` or ``rate_limited`` never ran (the ``tracked``
  action of sample_app notes every frame it runs in Redis);
- every connection gets exactly one disconnect event, with its true close code
  (sample_app's ``on_disconnect`` notes each in Redis);
- nothing is left of closed connections in the registry;
- the gateway's memory is back near its baseline after a flood;
- the same processes serve again, with no restart.

A test reports every guarantee it found broken, not only the first (``Findings``).
Each test has a redis-server of its own, which it may stall, stop or kill.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from raw_client import NO_CLOSE_FRAME, HandshakeRefused, RawClient, text_frame
from system_harness import (
    JWT_SECRET,
    GatewayProcess,
    StartGateway,
    StartWorker,
    inbound_length,
    inbound_pending,
    token,
)

from wsq_devkit import ManagedProcess, RedisServer, wait_until_async
from wsq_devkit.polling import DeadlineExceeded
from wsq_gateway.settings import Settings
from wsq_protocol.keys import Keys

pytestmark = pytest.mark.faults

# Codes that say "not accepted": a frame answered with one of them must never run.
NOT_ACCEPTED = {"unavailable", "overloaded", "rate_limited"}
ANSWER_TIMEOUT_S = 20.0  # for an answer once the fault is over: Redis' and the workers' back-off included
EVENT_TIMEOUT_S = 10.0  # for a disconnect event once the fault is over
_sentinels = itertools.count(1)

REDIS_TIMEOUT_S: float = Settings.model_fields["redis_timeout_s"].default  # WSQ_REDIS_TIMEOUT_S


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own (it may stall, stop or kill it), with an append-only file."""
    with RedisServer(appendonly=True) as server:
        yield server


class Findings:
    """The guarantees a test found broken, collected so that one run reports all of them."""

    def __init__(self) -> None:
        self.broken: list[str] = []

    def check(self, holds: bool, guarantee: str) -> bool:
        if not holds:
            self.broken.append(guarantee)
        return holds

    async def within(self, seconds: float, condition: Callable[[], object], guarantee: str) -> bool:
        """Poll ``condition`` until it is true; note ``guarantee`` as broken if it never is."""

        async def probe() -> bool:
            try:
                return bool(condition())
            except (redis.ConnectionError, redis.TimeoutError):  # Redis still coming back
                return False

        try:
            await wait_until_async(probe, timeout=seconds, interval=0.05, message=guarantee)
        except DeadlineExceeded:
            self.broken.append(f"{guarantee} (not within {seconds:g} s)")
            return False
        return True

    def assert_all_held(self) -> None:
        assert not self.broken, "broken guarantees:\n  " + "\n  ".join(self.broken)


@dataclass
class Registry:
    """What the test's processes wrote to Redis under its key prefix."""

    client: redis.Redis
    prefix: str
    without_event: set[str] = field(default_factory=set)  # connections found without a disconnect event

    def disconnects(self) -> list[tuple[str, int | None]]:
        """(connection id, close code) of each disconnect event sample_app's on_disconnect ran for."""
        raw: Any = self.client.lrange(f"{self.prefix}:test:disconnects", 0, -1)
        return [(seen["connection_id"], seen["close_code"]) for seen in map(json.loads, raw)]

    def processed(self) -> list[dict[str, Any]]:
        """What the ``tracked`` action noted for each frame it ran: connection_id, id, attempt, pid."""
        raw: Any = self.client.lrange(f"{self.prefix}:test:processed", 0, -1)
        return [json.loads(item) for item in raw]

    def quiet(self) -> bool:
        """The inbound stream is empty: every event appended so far was handled and acknowledged."""
        return inbound_length(self.client, self.prefix) == 0

    def presence(self) -> dict[str, set[str]]:
        """Each registry key about connections, and the connection ids it names."""
        found: dict[str, set[str]] = {}
        # Keys v2: {prefix:k}:conn:<id>[:groups], {prefix:k}:node:<node>:conns, and the
        # indexes {prefix:user:<u>}:conns, {prefix:group:<g>}:conns.
        for key in self.client.scan_iter(match=f"{{{self.prefix}:*}}:conn:*", count=1000):
            found[key] = {key.split("}:conn:", 1)[1].removesuffix(":groups")}
        patterns = [
            f"{{{self.prefix}:*}}:node:*:conns",
            f"{{{self.prefix}:user:*}}:conns",
            f"{{{self.prefix}:group:*}}:conns",
        ]
        for pattern in patterns:
            for key in self.client.scan_iter(match=pattern, count=1000):
                members: Any = self.client.smembers(key)
                found[key] = set(members)
        return found


@pytest.fixture
def registry(redis_client: redis.Redis, key_prefix: str) -> Registry:
    return Registry(redis_client, key_prefix)


@dataclass
class Sent:
    """The frames with an id a test sent, to check that each got exactly one answer."""

    frames: list[tuple[RawClient, str]] = field(default_factory=list)

    def send(self, client: RawClient, *ids: str, data: Any = None, action: str = "tracked") -> None:
        """Send one frame per id, all in one write."""
        client.send(*(text_frame(action, data, id) for id in ids))
        self.frames += [(client, id) for id in ids]

    def unanswered(self) -> list[str]:
        return [f"{client.label}/{id}" for client, id in self.frames if not client.answers(id)]


def label(client: RawClient) -> str:
    return f"{client.label} ({client.connection_id})"


async def connect(gateway: GatewayProcess, name: str, user: str | None = None) -> RawClient:
    query = f"token={token(user)}" if user is not None else ""
    return await RawClient.connect(gateway.port, gateway.path, query=query, label=name)


async def request(client: RawClient, action: str, data: Any = None, timeout: float = 10.0) -> dict[str, Any]:
    """Send a frame with a fresh id and return its first answer."""
    id = f"req-{next(_sentinels)}"
    client.send(text_frame(action, data, id))

    async def answers() -> list[dict[str, Any]]:
        return client.answers(id)

    return (await wait_until_async(answers, timeout=timeout, message=f"{client.label} answered"))[0]


async def check_answers(findings: Findings, sent: Sent, registry: Registry, *, timeout: float) -> None:
    """Every frame with an id got exactly one answer, and one refused never ran.

    Once every id has an answer and the workers are done with the inbound stream, each
    open client sends one more frame and waits for its reply: an answer given late (a
    second one) would have arrived before it, on the same ordered path.
    """
    answered = await findings.within(
        timeout, lambda: not sent.unanswered(), "every frame with an id is answered"
    )
    if not answered:
        findings.check(False, f"unanswered: {sent.unanswered()}")
    await findings.within(timeout, registry.quiet, "the workers handle every accepted event")
    for client in {client for client, _ in sent.frames}:
        if client.closed.done() or client.silent:
            continue
        await findings.within(10, sentinel_answered(client), f"{label(client)} is served after")
    ran = {(seen["connection_id"], seen["id"]) for seen in registry.processed()}
    for client, id in sent.frames:
        answers = client.answers(id)
        findings.check(len(answers) == 1, f"{client.label}/{id} got exactly one answer, not {answers}")
        for answer in answers:
            code = answer["data"].get("code") if answer["action"] == "$error" else None
            if code in NOT_ACCEPTED:
                findings.check(
                    (client.connection_id, id) not in ran,
                    f"{client.label}/{id} was answered {code} yet it ran",
                )


def sentinel_answered(client: RawClient) -> Callable[[], bool]:
    """Send an echo frame; the condition that it was answered."""
    id = f"sentinel-{next(_sentinels)}"
    client.send(text_frame("echo", None, id))
    return lambda: bool(client.answers(id))


async def check_disconnects(
    findings: Findings,
    registry: Registry,
    expected: dict[RawClient, int],
    *,
    timeout: float = EVENT_TIMEOUT_S,
    live: Iterable[RawClient] = (),
) -> None:
    """Each connection of ``expected`` got exactly one disconnect event, with its close code;
    the ``live`` ones got none. (Not waited for again: connections already found without one.)"""
    wanted = {client.connection_id for client in expected} - registry.without_event

    def missing() -> set[str]:
        return wanted - {connection_id for connection_id, _ in registry.disconnects()}

    seen = await findings.within(timeout, lambda: not missing(), "every closed connection's disconnect event")
    if not seen:
        names = [label(client) for client in expected if client.connection_id in missing()]
        findings.check(False, f"no disconnect event for {names}")
        registry.without_event |= missing()
    await findings.within(timeout, registry.quiet, "the workers handle every disconnect event")
    events = registry.disconnects()
    for client, code in expected.items():
        codes = [seen for connection_id, seen in events if connection_id == client.connection_id]
        if codes:  # a missing event was reported above
            findings.check(codes == [code], f"{label(client)}: one disconnect event with {code}, not {codes}")
    for client in live:
        codes = [seen for connection_id, seen in events if connection_id == client.connection_id]
        findings.check(not codes, f"{label(client)}, still open, got disconnect events {codes}")


def check_presence(findings: Findings, registry: Registry, live: Iterable[RawClient]) -> None:
    """The registry names live connections only: nothing is left of the closed ones."""
    live_ids = {client.connection_id for client in live}
    for key, ids in sorted(registry.presence().items()):
        findings.check(not ids - live_ids, f"{key} still names closed connection(s) {sorted(ids - live_ids)}")


async def check_serves_again(
    findings: Findings,
    gateway: GatewayProcess,
    processes: list[ManagedProcess],
    pids: list[int],
    user: str | None = None,
) -> RawClient | None:
    """The same processes serve again, no restart: /readyz says 200 and a new client gets a
    reply. Returns that client (the caller closes it) or None."""
    findings.check(
        [process.pid for process in processes] == pids and all(p.running() for p in processes),
        "every process still runs, none was restarted",
    )
    await findings.within(ANSWER_TIMEOUT_S, lambda: gateway.status("/readyz") == 200, "/readyz: 200 again")
    try:
        newcomer = await connect(gateway, "newcomer", user)
        reply = await request(newcomer, "echo", "again", timeout=ANSWER_TIMEOUT_S)
    except (HandshakeRefused, OSError, DeadlineExceeded, TimeoutError) as exc:
        findings.check(False, f"a new client gets a reply ({exc!r})")
        return None
    findings.check(reply.get("data") == "again", f"a new client gets a reply, not {reply}")
    return newcomer


def _async(condition: Callable[[], Any]) -> Callable[[], Any]:
    """``condition`` as the coroutine function ``wait_until_async`` polls."""

    async def probe() -> Any:
        return condition()

    return probe


def close_all(clients: Iterable[RawClient]) -> None:
    for client in clients:
        client.abort()


@pytest.mark.single_redis
async def test_redis_stall_longer_than_its_timeout_answers_each_frame_once(
    redis_server: RedisServer,
    start_gateway: StartGateway,
    start_worker: StartWorker,
    processes: list[ManagedProcess],
    registry: Registry,
) -> None:
    """SIGSTOP on redis-server for longer than the gateway's Redis timeout, then SIGCONT.

    Frames go in at three moments of the stall: at once (their write is on Redis' socket
    before the timeout), a second later (queued behind it), and after the timeout. Each
    must get exactly one answer; one answered ``unavailable`` must never run.
    """
    stall_s = REDIS_TIMEOUT_S + 2.0
    gateway = start_gateway()
    start_worker()
    pids = [process.pid for process in processes]
    ann, bob, leaver = [await connect(gateway, name) for name in ("ann", "bob", "leaver")]
    findings, sent = Findings(), Sent()
    try:
        assert (await request(ann, "echo", "before"))["data"] == "before"
        loop = asyncio.get_running_loop()
        redis_server.pause()
        stalled_at = loop.time()
        try:
            sent.send(ann, "at-once-1", "at-once-2")
            # The stall's schedule (fault parameters, not synchronisation): a second later,
            # then past the gateway's Redis timeout.
            await asyncio.sleep(1.0)
            sent.send(ann, "queued-1")
            sent.send(bob, "queued-2")
            await leaver.close(4001)  # the gateway answers it without Redis
            await asyncio.sleep(stalled_at + REDIS_TIMEOUT_S + 0.5 - loop.time())
            sent.send(ann, "late-1")
            sent.send(bob, "late-2")
            await asyncio.sleep(stalled_at + stall_s - loop.time())
        finally:
            redis_server.resume()

        await check_answers(findings, sent, registry, timeout=ANSWER_TIMEOUT_S + REDIS_TIMEOUT_S)
        newcomer = await check_serves_again(findings, gateway, processes, pids)
        clients = [ann, bob, *([newcomer] if newcomer else [])]
        await check_disconnects(findings, registry, {leaver: 4001}, live=clients)
        for client in clients:
            await client.close()
        await check_disconnects(findings, registry, {leaver: 4001} | dict.fromkeys(clients, 1000))
        check_presence(findings, registry, live=())
    finally:
        close_all([ann, bob, leaver])
    findings.assert_all_held()


@pytest.mark.single_redis
async def test_redis_sigterm_and_restart_from_its_append_only_file_loses_nothing_accepted(
    redis_server: RedisServer,
    start_gateway: StartGateway,
    start_worker: StartWorker,
    processes: list[ManagedProcess],
    registry: Registry,
    key_prefix: str,
) -> None:
    """redis-server stopped (SIGTERM) while handlers run, restarted on the same port and
    directory from its append-only file: what was accepted is answered, once."""
    outage_s = 2.0  # longer than the handlers take: their replies wait for Redis
    gateway = start_gateway()
    start_worker(WSQ_CLAIM_IDLE_MS="1000")
    pids = [process.pid for process in processes]
    ann, leaver = await connect(gateway, "ann"), await connect(gateway, "leaver")
    findings, sent = Findings(), Sent()
    try:
        sent.send(ann, "accepted-1", "accepted-2", "accepted-3", data=0.5)

        def running() -> bool:  # accepted, and taken by the worker
            return len(inbound_pending(registry.client, key_prefix)) == 3

        await wait_until_async(_async(running), timeout=10, message="the three frames are being handled")
        redis_server.stop()
        outage_started = time.monotonic()
        try:
            sent.send(ann, "during-outage")
            await leaver.close(4002)
            await asyncio.sleep(outage_s - (time.monotonic() - outage_started))
        finally:
            redis_server.start()

        await check_answers(findings, sent, registry, timeout=ANSWER_TIMEOUT_S)
        for id in ("accepted-1", "accepted-2", "accepted-3"):
            answers = ann.answers(id)
            findings.check(
                [answer["action"] for answer in answers] == ["tracked"],
                f"ann/{id}, accepted before the outage, got its reply: not {answers}",
            )
        newcomer = await check_serves_again(findings, gateway, processes, pids)
        clients = [ann, *([newcomer] if newcomer else [])]
        await check_disconnects(findings, registry, {leaver: 4002}, live=clients)
        for client in clients:
            await client.close()
        await check_disconnects(findings, registry, {leaver: 4002} | dict.fromkeys(clients, 1000))
        check_presence(findings, registry, live=())
    finally:
        close_all([ann, leaver])
    findings.assert_all_held()


@pytest.mark.single_redis
async def test_redis_sigkill_and_empty_restart_recovers_without_restarting_anything(
    redis_server: RedisServer,
    start_gateway: StartGateway,
    start_worker: StartWorker,
    processes: list[ManagedProcess],
    registry: Registry,
    key_prefix: str,
) -> None:
    """redis-server killed (SIGKILL) and started again empty: gateways register their live
    connections again at their next heartbeat, workers create the consumer group again."""
    heartbeat_s = 0.5
    gateway = start_gateway(
        WSQ_JWT_SECRET=JWT_SECRET, WSQ_NODE_HEARTBEAT_S=str(heartbeat_s), WSQ_NODE_TIMEOUT_S="5"
    )
    start_worker()
    pids = [process.pid for process in processes]
    ann, bob = await connect(gateway, "ann", user="ann"), await connect(gateway, "bob", user="bob")
    findings, sent = Findings(), Sent()
    try:
        assert (await request(ann, "join_room", "lobby"))["data"] is True

        redis_server.kill()
        redis_server.wipe()
        try:
            sent.send(ann, "during-outage")
            await findings.within(
                REDIS_TIMEOUT_S * 2, lambda: ann.answers("during-outage"), "a frame is answered without Redis"
            )
        finally:
            redis_server.start()  # empty: no file to load

        # Each try is a frame of its own, which must get exactly one answer too.
        for attempt in itertools.count(1):
            id = f"after-{attempt}"
            sent.send(ann, id)

            async def replied(id: str = id) -> bool:
                return any(answer["action"] == "tracked" for answer in ann.answers(id))

            try:
                await wait_until_async(replied, timeout=2, message="a reply")
                break
            except DeadlineExceeded:
                if attempt * 2 >= ANSWER_TIMEOUT_S:
                    findings.check(False, "new frames get replies after the empty restart")
                    break
        await check_answers(findings, sent, registry, timeout=ANSWER_TIMEOUT_S)

        node = gateway.node_id
        prefix = key_prefix

        keys = Keys(prefix)

        def registered_again() -> bool:
            client = registry.client
            return bool(
                client.exists(keys.connection(ann.connection_id))
                + client.exists(keys.connection(bob.connection_id))
                == 2
                and client.smembers(keys.node_connections(node)) >= {ann.connection_id, bob.connection_id}
                and client.sismember(keys.user_connections("ann"), ann.connection_id)
                and client.sismember(keys.user_connections("bob"), bob.connection_id)
                and client.sismember(keys.group_connections("lobby"), ann.connection_id)
                and client.sismember(keys.connection_groups(ann.connection_id), "lobby")
            )

        await findings.within(
            heartbeat_s * 4 + ANSWER_TIMEOUT_S,
            registered_again,
            "live connections, their users and groups are in the registry again",
        )
        newcomer = await check_serves_again(findings, gateway, processes, pids, user="cid")
        clients = [ann, bob, *([newcomer] if newcomer else [])]
        check_presence(findings, registry, live=clients)
        await ann.close(4100)
        await bob.close()
        if newcomer:
            await newcomer.close()
        await check_disconnects(findings, registry, {ann: 4100, bob: 1000} | dict.fromkeys(clients[2:], 1000))
        check_presence(findings, registry, live=())
    finally:
        close_all([ann, bob])
    findings.assert_all_held()


async def test_gateway_sigkill_its_connections_are_reaped_by_a_survivor(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    processes: list[ManagedProcess],
    registry: Registry,
    key_prefix: str,
) -> None:
    """A gateway killed (SIGKILL): a surviving gateway forgets its connections within
    WSQ_NODE_TIMEOUT_S + WSQ_NODE_HEARTBEAT_S, one disconnect event each, with 1006."""
    heartbeat_s, timeout_s = 0.5, 2.0
    liveness = {"WSQ_NODE_HEARTBEAT_S": str(heartbeat_s), "WSQ_NODE_TIMEOUT_S": str(timeout_s)}
    victim = start_gateway(WSQ_JWT_SECRET=JWT_SECRET, **liveness)
    survivor = start_gateway(WSQ_JWT_SECRET=JWT_SECRET, **liveness)
    start_worker()
    lost = [await connect(victim, f"lost-{n}", user=user) for n, user in enumerate(("ann", "bob", "bob"))]
    stayer = await connect(survivor, "stayer", user="bob")
    findings = Findings()
    try:
        for client in (lost[0], lost[1], stayer):
            assert (await request(client, "join_room", "lobby"))["data"] is True

        victim.process.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.process.wait(timeout=10)
        alive = [process for process in processes if process is not victim.process]
        pids = [process.pid for process in alive]
        # The survivor notices within the timeout and a heartbeat; then a worker runs the events.
        await check_disconnects(
            findings,
            registry,
            dict.fromkeys(lost, NO_CLOSE_FRAME),
            timeout=timeout_s + heartbeat_s + EVENT_TIMEOUT_S,
            live=[stayer],
        )
        noticed_s = time.monotonic() - killed_at
        findings.check(
            noticed_s < timeout_s + heartbeat_s + 5.0,
            f"the dead gateway's connections are forgotten within {timeout_s + heartbeat_s:g} s "
            f"(+5 s for the worker), not {noticed_s:.1f} s",
        )
        check_presence(findings, registry, live=[stayer])
        nodes: Any = registry.client.zrange(f"{key_prefix}:nodes", 0, -1)
        findings.check(victim.node_id not in nodes, f"the dead gateway left {key_prefix}:nodes: {nodes}")
        findings.check(
            not registry.client.exists(Keys(key_prefix).node_stream(victim.node_id)),
            "the dead gateway's stream is deleted",
        )
        reply = await request(stayer, "echo", "still here")
        findings.check(reply.get("data") == "still here", f"the survivor's client is served: {reply}")
        newcomer = await check_serves_again(findings, survivor, alive, pids, user="cid")
        clients = [stayer, *([newcomer] if newcomer else [])]
        for client in clients:
            await client.close()
        await check_disconnects(
            findings, registry, dict.fromkeys(lost, NO_CLOSE_FRAME) | dict.fromkeys(clients, 1000)
        )
        check_presence(findings, registry, live=())
    finally:
        close_all([*lost, stayer])
    findings.assert_all_held()


async def test_worker_sigkill_mid_handler_another_worker_runs_it_again(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    processes: list[ManagedProcess],
    registry: Registry,
) -> None:
    """A worker killed (SIGKILL) in the middle of a handler: after WSQ_CLAIM_IDLE_MS another
    worker runs the message again (attempt 2), and the client gets exactly one answer."""
    claim_idle_ms = 1000
    gateway = start_gateway()
    workers = [start_worker(WSQ_CLAIM_IDLE_MS=str(claim_idle_ms)) for _ in range(2)]
    ann = await connect(gateway, "ann")
    findings, sent = Findings(), Sent()
    try:
        sent.send(ann, "doomed", data=60)  # its first attempt sleeps for a minute

        def first_attempt() -> dict[str, Any] | None:
            return next((seen for seen in registry.processed() if seen["id"] == "doomed"), None)

        started = await wait_until_async(_async(first_attempt), timeout=10, message="the handler started")
        (doomed_worker,) = [worker for worker in workers if worker.pid == started["pid"]]
        (other_worker,) = [worker for worker in workers if worker is not doomed_worker]
        doomed_worker.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        doomed_worker.wait(timeout=10)
        alive = [process for process in processes if process is not doomed_worker]
        pids = [process.pid for process in alive]

        # Idle for claim_idle_ms, then found by a claim (every claim_idle_ms / 2).
        answered = await findings.within(
            claim_idle_ms * 1.5 / 1000 + 5, lambda: ann.answers("doomed"), "the message runs again"
        )
        if answered:
            findings.check(
                ann.answers("doomed")[0]
                == {"action": "tracked", "data": {"attempt": 2, "pid": other_worker.pid}, "id": "doomed"},
                f"the other worker ran it as attempt 2: {ann.answers('doomed')}",
            )
            findings.check(
                time.monotonic() - killed_at >= claim_idle_ms / 1000,
                "the message runs again only once it was idle for WSQ_CLAIM_IDLE_MS",
            )
        await check_answers(findings, sent, registry, timeout=ANSWER_TIMEOUT_S)
        attempts = [(seen["attempt"], seen["pid"]) for seen in registry.processed() if seen["id"] == "doomed"]
        findings.check(
            attempts == [(1, doomed_worker.pid), (2, other_worker.pid)],
            f"it ran twice, once in each worker: {attempts}",
        )
        newcomer = await check_serves_again(findings, gateway, alive, pids)
        clients = [ann, *([newcomer] if newcomer else [])]
        for client in clients:
            await client.close()
        await check_disconnects(findings, registry, dict.fromkeys(clients, 1000))
        check_presence(findings, registry, live=())
    finally:
        close_all([ann])
    findings.assert_all_held()


@pytest.mark.parametrize("how", ["fin", "rst", "silence"])
async def test_client_vanishing_gets_one_disconnect_event_with_1006(
    how: str,
    start_gateway: StartGateway,
    start_worker: StartWorker,
    processes: list[ManagedProcess],
    registry: Registry,
) -> None:
    """Clients that leave without a close frame (a FIN, an RST, or silence: no pong to the
    gateway's pings) each get one disconnect event, with 1006, and leave nothing behind."""
    heartbeat_s = 0.5
    gateway = start_gateway(WSQ_JWT_SECRET=JWT_SECRET, WSQ_HEARTBEAT_S=str(heartbeat_s))
    start_worker()
    pids = [process.pid for process in processes]
    stayer = await connect(gateway, "stayer", user="ann")
    leavers = [await connect(gateway, f"{how}-{n}", user="ann") for n in range(3)]
    findings = Findings()
    try:
        for client in (stayer, *leavers):
            assert (await request(client, "join_room", "lobby"))["data"] is True
        for client in leavers:
            client.vanish(how)
        # A silent client is closed once it missed a pong (half a heartbeat after a ping).
        await check_disconnects(
            findings,
            registry,
            dict.fromkeys(leavers, NO_CLOSE_FRAME),
            timeout=heartbeat_s * 2 + EVENT_TIMEOUT_S,
            live=[stayer],
        )
        check_presence(findings, registry, live=[stayer])
        reply = await request(stayer, "echo", "still here")
        findings.check(reply.get("data") == "still here", f"the other client is served: {reply}")
        newcomer = await check_serves_again(findings, gateway, processes, pids, user="bob")
        clients = [stayer, *([newcomer] if newcomer else [])]
        for client in clients:
            await client.close()
        await check_disconnects(
            findings, registry, dict.fromkeys(leavers, NO_CLOSE_FRAME) | dict.fromkeys(clients, 1000)
        )
        check_presence(findings, registry, live=())
    finally:
        close_all([stayer, *leavers])
    findings.assert_all_held()


async def test_flood_above_every_limit_is_answered_and_memory_comes_back(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    processes: list[ManagedProcess],
    registry: Registry,
) -> None:
    """Rounds of a flood over every limit at once: a burst of upgrades three times the
    per-address cap, frames over the size limit, and bursts of frames over the rate limit
    and the gateway's queue. Each over-limit frame gets its one ``$error`` (and never runs),
    each connection its one disconnect event, and the gateway's memory comes back."""
    cap, frames_each, rounds = 10, 60, 2
    gateway = start_gateway(
        WSQ_JWT_SECRET=JWT_SECRET,  # signed-in users, as most apps have
        WSQ_MAX_CONNECTIONS_PER_ADDR=str(cap),
        WSQ_MAX_MESSAGE_BYTES="1024",
        WSQ_RATE_LIMIT="20",
        WSQ_RATE_BURST="20",  # a burst of frames_each frames: 20 pass the rate limit...
        WSQ_MAX_QUEUED_FRAMES="8",  # ... and of those, more than 8 at once fill the queue
        WSQ_LOG_LEVEL="info",  # not a debug line per connection: the memory measured is the gateway's
    )
    start_worker()
    pids = [process.pid for process in processes]
    findings = Findings()
    error_codes: set[str] = set()

    async def flood(round: int) -> None:
        attempts = await asyncio.gather(
            *(connect(gateway, f"round{round}-{n}", user=f"user{n}") for n in range(3 * cap)),
            return_exceptions=True,
        )
        clients = [attempt for attempt in attempts if isinstance(attempt, RawClient)]
        refusals = [attempt for attempt in attempts if not isinstance(attempt, RawClient)]
        findings.check(
            len(clients) <= cap,
            f"round {round}: {len(clients)} of {3 * cap} concurrent upgrades opened, over a cap of {cap}",
        )
        findings.check(
            all(isinstance(refusal, HandshakeRefused) and refusal.status == 429 for refusal in refusals),
            f"round {round}: upgrades over the cap are refused with HTTP 429, not {refusals}",
        )
        oversized, flooders = clients[:3], clients[3:]
        try:
            for client in oversized:
                client.send(text_frame("echo", "x" * 2048))
            sent = Sent()
            for n, client in enumerate(flooders):
                sent.send(client, *(f"r{round}-{n}-{k}" for k in range(frames_each)))
            await check_answers(findings, sent, registry, timeout=ANSWER_TIMEOUT_S)
            error_codes.update(
                answer["data"]["code"]
                for client, id in sent.frames
                for answer in client.answers(id)
                if answer["action"] == "$error"
            )
            closes = await asyncio.gather(
                *(asyncio.wait_for(asyncio.shield(client.closed), 10) for client in oversized),
                return_exceptions=True,
            )
            findings.check(
                closes == [1009] * len(oversized), f"frames over the size limit close with 1009, not {closes}"
            )
            for client in flooders:
                await client.close()
            await check_disconnects(
                findings, registry, dict.fromkeys(oversized, 1009) | dict.fromkeys(flooders, 1000)
            )
            check_presence(findings, registry, live=())
        finally:
            close_all(clients)

    await flood(0)  # warms up every path, so the baseline counts what a flood leaves behind
    baseline = gateway.process.rss_kib()
    for round in range(1, rounds + 1):
        await flood(round)
    after = gateway.process.rss_kib()
    findings.check(
        {"rate_limited", "overloaded"} <= error_codes,
        f"the flood went over the rate limit and the queue (else it proves nothing): {error_codes}",
    )
    findings.check(
        after < baseline * 1.3 + 10_240,
        f"the gateway's memory comes back: {after} KiB after, {baseline} before",
    )
    newcomer = await check_serves_again(findings, gateway, processes, pids, user="cid")
    if newcomer is not None:
        await newcomer.close()
        await check_disconnects(findings, registry, {newcomer: 1000})
    findings.assert_all_held()
