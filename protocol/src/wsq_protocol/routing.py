"""The shared pipe on a Redis Cluster: commands sent raw on one connection per master, routed by
slot with redis-py's slot map (``RedisCluster.nodes_manager``), redirects and fail-overs
followed.

redis-py's own cluster pipeline routes the same way but costs 4-6 times the client's CPU per
command of a pipe writing to each master's connection directly (``bench/cluster_client.py``):
a task, a timeout and a response callback per command and per node, a command object each.

* :class:`SlotPipe` — what ``RedisPipe(cluster_client, key=...)`` builds: a :class:`RedisPipe`
  bound to the master serving one key's slot (a gateway's shard, one inbound partition), with
  the same options and failures, plus the cluster's.
* :class:`RoutedPipe` — ``execute([(key, command), ...])``: each command to the master of its
  key's slot, one pipeline per master (all written before any is read, so the masters work at
  once), the replies in the commands' order, each command's failure in its place. On a single
  Redis (a plain client) the same call sends everything on one connection.

Both follow what the cluster answers: ``MOVED`` (the slot has a new master: the slot map is
updated and the command sent there), ``ASK`` (the slot is migrating: ``ASKING`` and the
command to the node named), ``TRYAGAIN`` and ``CLUSTERDOWN`` (the slot is moving, a fail-over
is under way: sent again after a pause). A command answered so did not run, so sending it again
is always safe; a transaction (``MULTI`` ... ``EXEC``) one of whose commands was redirected was
aborted whole (``EXECABORT``), and is sent again whole. A connection that fails (its master
died) makes the pipe re-read the slot map and send again where resending is allowed, until a
replica is promoted or ``failover_s`` passes (:class:`ClusterUnavailable`). ``NOSCRIPT`` to an
``EVALSHA`` of a script the pipe was given (``scripts=``) is answered by its ``EVAL``: a
replica just promoted may not know it.

The order of commands to one slot holds, except for a command sent again while others of its
slot ran: one asked elsewhere while its slot migrates, an ``EVALSHA`` sent again as ``EVAL``
(both run after the rest of their batch).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar

from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsq_protocol.batching import Backoff
from wsq_protocol.pipe import (
    KEEPALIVE,
    BatchDeadline,
    RedisPipe,
    WriteInDoubt,
    as_eval,
    closed_by_peer,
    log,
    pack_command,
    script_bodies,
    transactions,
)
from wsq_protocol.scripts import Script

__all__ = ["FAILOVER_S", "ClusterUnavailable", "RoutedPipe", "SlotPipe", "slot_of"]

FAILOVER_S = 30.0
"""How long a pipe waits, by default, for a slot's master to answer again (a replica promoted:
about the cluster's ``cluster-node-timeout`` plus an election) before giving up."""

_ASKING = b"*1\r\n$6\r\nASKING\r\n"


class _Unsent:
    """A link's send that could not connect: nothing of it reached Redis."""


_UNSENT = _Unsent()
T = TypeVar("T")
_LOST = (RedisConnectionError, RedisTimeoutError, OSError)


class ClusterUnavailable(RedisConnectionError):
    """No master answered for a command's slot within the pipe's ``failover_s`` (it died and no
    replica took over, or the slot is not served): nothing more was sent for it."""


@functools.lru_cache(maxsize=65536)
def slot_of(key: str | bytes) -> int:
    """The cluster slot of ``key`` (its hash tag's, when it has one). Cached: a process sends to
    the same keys again and again (its shards' streams, its connections' records)."""
    return key_slot(key.encode() if isinstance(key, str) else key)


class _Link:
    """One connection to one cluster node, its replies read raw (as ``RedisPipe``'s)."""

    __slots__ = ("conn", "name")

    def __init__(self, node: ClusterNode, options: dict[str, Any], on_connect: Any) -> None:
        self.name = node.name
        self.conn: AbstractConnection = node.connection_class(**{**node.connection_kwargs, **options})
        if on_connect is not None:
            self.conn.register_connect_callback(on_connect)  # type: ignore[no-untyped-call]

    async def ensure_connected(self) -> None:
        conn = self.conn
        if conn.is_connected and closed_by_peer(conn):
            await conn.disconnect(nowait=True)  # the node went away while idle: not a doubt
        if not conn.is_connected:
            await conn.connect()  # type: ignore[no-untyped-call]


class _Sent:
    """What one round sent on one link: the commands' indices, those sent after an ``ASKING``,
    and how many were answered (-1: the send failed)."""

    __slots__ = ("asking", "indices", "link", "read")

    def __init__(self, link: _Link, indices: list[int], asking: frozenset[int]) -> None:
        self.link, self.indices, self.asking, self.read = link, indices, asking, 0


class _Router:
    """The cluster routing both pipes share: links per node, rounds of sends, redirects."""

    def __init__(
        self,
        client: AsyncRedisCluster,
        *,
        resend: bool,
        writes: bool,
        on_connect: tuple[Any, ...] | None,
        failover_s: float,
        scripts: Iterable[Script],
    ) -> None:
        assert isinstance(client, AsyncRedisCluster)
        self.client = client
        self.writes = writes
        self.resend = resend and not writes
        self.failover_s = failover_s
        self.scripts = script_bodies(scripts)
        socket_timeout = client.nodes_manager.connection_kwargs.get("socket_timeout")
        self.deadline = BatchDeadline(None if writes else socket_timeout)
        # No socket timeout: the deadline bounds a whole round (see RedisPipe).
        self.options: dict[str, Any] = {"socket_timeout": None}
        if writes:
            self.options |= {"socket_keepalive": True, "socket_keepalive_options": KEEPALIVE}
        self.on_connect = None if on_connect is None else pack_command(on_connect)
        self.links: dict[str, _Link] = {}
        self.ready = False

    # The slot map.

    async def initialize(self) -> None:
        if not self.ready:
            await self.client.initialize()
            self.ready = True

    def node_of(self, slot: int) -> ClusterNode:
        """The master serving ``slot`` (redis-py's map); SlotNotCoveredError when none does."""
        return self.client.nodes_manager.get_node_from_slot(slot)

    async def refresh(self) -> None:
        """Read the slot map again (after a lost connection or a CLUSTERDOWN); a refresh that
        fails leaves the map as it was, for the next attempt."""
        try:
            await self.client.nodes_manager.initialize()
        except (RedisClusterException, *_LOST) as exc:
            log.info("could not read the cluster's slot map: %s", exc)

    async def moved(self, error: MovedError) -> None:
        nodes = self.client.nodes_manager
        if error.slot_id in nodes.slots_cache:
            await nodes.move_slot(error)
        else:
            await self.refresh()

    def link(self, node: ClusterNode) -> _Link:
        link = self.links.get(node.name)
        if link is None:
            link = self.links[node.name] = _Link(node, self.options, self._run_on_connect)
        return link

    def ask_target(self, error: AskError) -> ClusterNode:
        nodes = self.client.nodes_manager
        host, port = nodes.remap_host_port(error.host, error.port)
        node = nodes.get_node(host=host, port=port)
        return node or ClusterNode(host, port, **nodes.connection_kwargs)

    async def _run_on_connect(self, conn: AbstractConnection) -> None:
        if self.on_connect is None:
            return
        await conn.send_packed_command(self.on_connect, check_health=False)
        try:
            await conn.read_response(disable_decoding=True, timeout=math.inf)
        except ResponseError as exc:
            log.warning("redis refused the command run on connecting: %s", exc)

    async def aclose(self) -> None:
        for link in self.links.values():
            await link.conn.disconnect(nowait=True)
        self.links.clear()

    # A batch.

    async def run(self, slots: Sequence[int], packed: list[bytes], *, in_place: bool) -> list[Any]:
        """Each command (``packed[i]``, in slot ``slots[i]``) to its slot's master, until each has
        a reply: its own, or (``in_place``) the failure that ended its tries; without
        ``in_place`` a lost connection raises, as ``RedisPipe.execute`` does."""
        await self.initialize()
        replies: list[Any] = [None] * len(packed)
        todo = list(range(len(packed)))
        asked: dict[int, ClusterNode] = {}  # index -> the node an ASK named
        give_up = time.monotonic() + self.failover_s
        backoff = Backoff(base=0.02, cap=0.5)
        spans = transactions(packed)
        while True:
            retry, pause = await self._round(slots, packed, todo, asked, replies, spans, in_place)
            if not retry:
                return replies
            if time.monotonic() >= give_up:
                error = ClusterUnavailable(
                    f"no master answered for slot {slots[retry[0]]} within {self.failover_s:g} s"
                )
                if not in_place:
                    raise error
                for index in retry:
                    replies[index] = error
                return replies
            if pause:
                await asyncio.sleep(backoff.next())
            todo = retry

    async def _round(
        self,
        slots: Sequence[int],
        packed: list[bytes],
        todo: list[int],
        asked: dict[int, ClusterNode],
        replies: list[Any],
        spans: dict[int, int],
        in_place: bool,
    ) -> tuple[list[int], bool]:
        """Send ``todo`` once, one pipeline per node; the indices to send again (in order), and
        whether to pause first."""
        groups: dict[str, tuple[ClusterNode, list[int], set[int]]] = {}
        retry: list[int] = []
        refresh = pause = False
        masters: dict[int, ClusterNode | None] = {}  # slot -> its master, looked up once a round
        for index in todo:
            node = asked.pop(index, None) if asked else None
            is_asked = node is not None
            if node is None:
                slot = slots[index]
                if slot in masters:
                    node = masters[slot]
                else:
                    try:
                        node = masters[slot] = self.node_of(slot)
                    except RedisClusterException:  # no master for this slot in the map
                        node = masters[slot] = None
                if node is None:
                    retry.append(index)
                    refresh = pause = True
                    continue
            group = groups.get(node.name)
            if group is None:
                group = groups[node.name] = (node, [], set())
            group[1].append(index)
            # ASKING holds for one command, or for a whole transaction sent after it.
            if is_asked and spans.get(index, index) == index:
                group[2].add(index)
        sent: list[_Sent] = []
        # Write every group before reading any: the masters run theirs at once. Each link's
        # send, and each link's replies, are bounded by the deadline (the client's
        # socket_timeout) on their own: a stalled master costs its own commands only.
        try:
            for node, indices, asking in groups.values():
                entry = _Sent(self.link(node), indices, frozenset(asking))
                state = await self._bounded(self._send(entry, packed))
                if state is _UNSENT:  # nothing sent: always safe to try again
                    retry += indices
                    refresh = pause = True
                    continue
                sent.append(entry)
                if isinstance(state, BaseException):
                    entry.read = -1
                    await self._lost(entry, state, replies, retry, in_place)
                    refresh = pause = True
            for entry in sent:
                if entry.read < 0:
                    continue
                lost = await self._bounded(self._read(entry, replies))
                if lost is not None:
                    await self._lost(entry, lost, replies, retry, in_place)
                    refresh = pause = True
        except BaseException:
            await _disconnect_unread(sent)  # replies may still come: out of step
            raise
        # What the cluster answered: redirects, and NOSCRIPT for a known script, are sent again.
        for entry in sent:
            for index in entry.indices[: max(entry.read, 0)]:
                reply = replies[index]
                if isinstance(reply, ResponseError):
                    again, wait, stale = await self._answered(index, reply, slots, packed, asked, spans)
                    if again:
                        retry.append(index)
                    pause |= wait
                    refresh |= stale
        if spans and retry:
            retry = _whole_transactions(retry, spans, asked)
        if refresh:
            await self.refresh()
        return sorted(set(retry)), pause

    async def _bounded(self, step: Awaitable[T]) -> T | BaseException:
        """``step``'s result, or the ``TimeoutError`` of the deadline when it expired first."""
        self.deadline.start()
        try:
            result = await step
        except asyncio.CancelledError:
            if not self.deadline.stop():
                raise  # cancelled from outside
            return RedisTimeoutError("Timeout reading from Redis")
        except BaseException:
            self.deadline.stop()
            raise
        self.deadline.stop()
        return result

    async def _send(self, entry: _Sent, packed: list[bytes]) -> BaseException | _Unsent | None:
        """Connect if need be, then send ``entry``'s commands: None once sent, ``_UNSENT`` when
        the connection could not be made (nothing sent), else the error of a failed send."""
        link = entry.link
        try:
            await link.ensure_connected()
        except _LOST as exc:
            log.info("could not connect to %s: %s", link.name, exc)
            return _UNSENT
        except asyncio.CancelledError:
            await link.conn.disconnect(nowait=True)
            raise
        indices, asking = entry.indices, entry.asking
        batch = [packed[i] for i in indices]
        if asking:
            batch = [
                part for i in indices for part in ((_ASKING, packed[i]) if i in asking else (packed[i],))
            ]
        try:
            await link.conn.send_packed_command(batch)
        except _LOST as exc:
            return exc
        return None

    async def _read(self, entry: _Sent, replies: list[Any]) -> BaseException | None:
        """Read ``entry``'s replies into ``replies``: None, or the error that cut them short."""
        conn = entry.link.conn
        try:
            for index in entry.indices:
                if index in entry.asking:
                    await _read(conn)  # ASKING's OK
                replies[index] = await _read(conn)
                entry.read += 1
        except _LOST as exc:
            return exc
        return None

    async def _answered(
        self,
        index: int,
        reply: ResponseError,
        slots: Sequence[int],
        packed: list[bytes],
        asked: dict[int, ClusterNode],
        spans: dict[int, int],
    ) -> tuple[bool, bool, bool]:
        """(send again?, pause first?, re-read the slot map?) for a command Redis refused."""
        if isinstance(reply, AskError) and reply.slot_id != slots[index]:
            return False, False, False  # a key of another slot than its caller said: an error
        if isinstance(reply, MovedError):
            await self.moved(reply)
            return True, False, False
        if isinstance(reply, AskError):
            asked[index] = self.ask_target(reply)
            return True, False, False
        if isinstance(reply, TryAgainError):
            return True, True, False
        if isinstance(reply, ClusterDownError):
            return True, True, True
        if isinstance(reply, NoScriptError) and index not in spans:
            command = as_eval(packed[index], self.scripts)
            if command is not None:
                packed[index] = command
                return True, False, False
        return False, False, False

    async def _lost(
        self, entry: _Sent, exc: BaseException, replies: list[Any], retry: list[int], in_place: bool
    ) -> None:
        """``entry``'s connection failed after its commands were sent: those not answered ran
        or not. They are sent again if the pipe may; else they fail (raising, or in place)."""
        unread = entry.indices[max(entry.read, 0) :]
        if entry.read >= 0:
            entry.read = len(entry.indices)  # nothing more to read on it
        log.info("lost the connection to %s, %d commands unanswered: %s", entry.link.name, len(unread), exc)
        await entry.link.conn.disconnect(nowait=True)
        if self.resend:
            for index in unread:
                replies[index] = None  # a reply of an earlier round is not this one's
            retry += unread
            return
        error: Exception
        if self.writes:
            error = WriteInDoubt(f"the connection to Redis failed during a write: {exc}")
        else:
            error = exc if isinstance(exc, Exception) else RedisConnectionError(str(exc))
        if not in_place:
            raise error from exc
        for index in unread:
            replies[index] = error


async def _disconnect_unread(sent: list[_Sent]) -> None:
    for entry in sent:
        if 0 <= entry.read < len(entry.indices):
            await entry.link.conn.disconnect(nowait=True)


async def _read(conn: AbstractConnection) -> Any:
    try:  # math.inf: no timeout per reply, the deadline bounds them all
        return await conn.read_response(disable_decoding=True, timeout=math.inf)
    except ResponseError as exc:
        return exc


def _whole_transactions(retry: list[int], spans: dict[int, int], asked: dict[int, ClusterNode]) -> list[int]:
    """``retry`` with, for each of its commands inside a transaction, the whole transaction
    (``MULTI`` to ``EXEC``: Redis aborted it, none of it ran), sent where an ``ASK`` said."""
    starts = {spans[index] for index in retry if index in spans}
    if not starts:
        return retry
    again = [index for index in retry if index not in spans]
    members: dict[int, list[int]] = {}
    for index, start in spans.items():
        if start in starts:
            members.setdefault(start, []).append(index)
    for indices in members.values():
        again += indices
        target = next((asked[index] for index in indices if index in asked), None)
        for index in indices:
            asked.pop(index, None)
        if target is not None:
            asked[indices[0]] = target  # ASKING before MULTI holds until EXEC
            for index in indices[1:]:
                asked[index] = target
    return again


class SlotPipe(RedisPipe):
    """A :class:`RedisPipe` on a Redis Cluster, bound to the master serving ``key``'s slot:
    what ``RedisPipe(cluster_client, key=...)`` builds. Every command of its batches must be in
    that slot (a script's keys, a transaction's: one hash tag).

    Its failures are ``RedisPipe``'s: a batch lost midway (or not answered within the client's
    ``socket_timeout``) is sent again (``resend``), raises (``resend=False``) or raises
    :class:`WriteInDoubt` (``writes``, which has no timeout). On top: a redirect is
    followed, a connection that fails before its batch is sent (its master died) is tried again
    on the slot's master as the slot map says, until ``failover_s`` passes
    (:class:`ClusterUnavailable`). ``scripts``: ``NOSCRIPT`` to their ``EVALSHA`` is answered
    by their ``EVAL`` (outside a transaction)."""

    def __init__(
        self,
        client: Any,
        *,
        key: str | bytes | None = None,
        resend: bool = True,
        writes: bool = False,
        on_connect: tuple[Any, ...] | None = None,
        failover_s: float = FAILOVER_S,
        scripts: Iterable[Script] = (),
    ) -> None:
        if key is None:
            raise TypeError("RedisPipe on a Redis Cluster needs key=: the pipe is bound to that key's slot")
        self.slot = slot_of(key)
        self._router = _Router(
            client,
            resend=resend,
            writes=writes,
            on_connect=on_connect,
            failover_s=failover_s,
            scripts=scripts,
        )

    async def connect(self) -> None:
        """Connect now to the slot's master if not connected: a failure means that nothing of
        the next batch was sent."""
        router = self._router
        await router.initialize()
        link = router.link(router.node_of(self.slot))
        conn = link.conn
        if conn.is_connected:
            can_read = getattr(conn, "can_read", None) or conn.can_read_destructive
            try:
                stale = bool(await can_read())
            except _LOST:
                stale = True
            if stale:
                await conn.disconnect(nowait=True)
        await link.ensure_connected()

    def pack(self, command: tuple[Any, ...]) -> bytes:
        return pack_command(command)

    async def execute(self, commands: Sequence[tuple[Any, ...] | bytes]) -> list[Any]:
        packed = [pack_command(command) for command in commands]
        return await self._router.run([self.slot] * len(packed), packed, in_place=False)

    async def aclose(self) -> None:
        await self._router.aclose()


class RoutedPipe:
    """Commands to the masters of their keys' slots, one pipeline per master; replies in order.

    ``execute([(key, command), ...])``: ``key`` is the key whose slot the command runs in (a
    script's first key; for ``MULTI`` and ``EXEC``, their transaction's). Each reply is the
    command's, or in its place the exception that ended it: a ``ResponseError`` Redis answered;
    :class:`ClusterUnavailable` when its slot's master did not answer within ``failover_s``;
    with ``resend=False``, the ``ConnectionError`` (or ``TimeoutError``: its master did not
    answer within the client's ``socket_timeout``) of a connection lost after the command was
    sent (it ran or not: never sent twice). ``execute`` itself raises only when cancelled.

    On a single Redis (a plain client) the commands all go on one :class:`RedisPipe`; a
    connection lost or a timeout puts its error in the place of every command of the batch
    (all of them are in doubt there). One task at a time, as ``RedisPipe``.
    """

    def __init__(
        self,
        client: Any,
        *,
        resend: bool = True,
        on_connect: tuple[Any, ...] | None = None,
        failover_s: float = FAILOVER_S,
        scripts: Iterable[Script] = (),
    ) -> None:
        self._router: _Router | None = None
        self._single: RedisPipe | None = None
        if isinstance(client, AsyncRedisCluster):
            self._router = _Router(
                client,
                resend=resend,
                writes=False,
                on_connect=on_connect,
                failover_s=failover_s,
                scripts=scripts,
            )
        else:
            self._single = RedisPipe(client, resend=resend, on_connect=on_connect)

    def pack(self, command: tuple[Any, ...]) -> bytes:
        """``command`` in RESP, for ``execute()`` later (see ``RedisPipe.pack``)."""
        return pack_command(command)

    async def execute(self, commands: Sequence[tuple[str | bytes, tuple[Any, ...] | bytes]]) -> list[Any]:
        if self._single is not None:
            try:
                return await self._single.execute([command for _, command in commands])
            except _LOST as exc:  # the one server: every command's failure, as on a cluster
                return [exc] * len(commands)
        assert self._router is not None
        slots = [slot_of(key) for key, _ in commands]
        packed = [pack_command(command) for _, command in commands]
        return await self._router.run(slots, packed, in_place=True)

    async def aclose(self) -> None:
        if self._single is not None:
            await self._single.aclose()
        if self._router is not None:
            await self._router.aclose()
