"""Typed helpers for the worker tests: views of redis-py replies, and the types behind the
fixtures of ``conftest.py`` (``Schemas``, ``FakeGateway``, ``StartWorker``, ``ReplyCutter``).

redis-py types a reply for any client: ``bytes | str`` (it cannot know ``decode_responses``), a
stream range as optional, XREADGROUP and ZRANGE as unions of every shape they can take. The
tests' ``redis_client`` decodes replies (``str``), a few other clients do not (``bytes``): these
give a reply the one type it has there, with a cast where redis-py returns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis.asyncio
from redis.typing import StreamRangeResponse

from wsq_devkit import contract, wait_until_async
from wsq_devkit.redis_typing import xadd_fields
from wsq_protocol.ids import new_connection_id
from wsq_protocol.keys import keys_for
from wsq_protocol.membership import Intent, index_call
from wsq_protocol.scripts import run, script
from wsq_worker import Worker

StrEntry = tuple[str, dict[str, str]]
"""A stream entry read by a client with ``decode_responses=True``: its id and its fields."""


def str_reply(reply: bytes | str) -> str:
    """A single reply of a client with ``decode_responses=True`` (an entry id, a member)."""
    return cast(str, reply)


def str_entries(reply: StreamRangeResponse | None) -> list[StrEntry]:
    """An XRANGE/XREVRANGE reply of a client with ``decode_responses=True``."""
    return cast("list[StrEntry]", reply)


StartWorker = Callable[..., Awaitable[Worker]]
"""The ``start_worker`` fixture: ``await start_worker(actions, **options)`` starts a Worker."""


@contextlib.asynccontextmanager
async def worker_starter(**defaults: Any) -> AsyncIterator[StartWorker]:
    """``start(actions, **options)``: a Worker (``defaults`` and ``options`` its arguments)
    running ``run_async()`` in a task until the block ends, when each is stopped and awaited
    (reads block 100 ms so that stopping is quick)."""
    runs: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(actions: dict[str, Any] | None = None, **options: Any) -> Worker:
        options = {"block_ms": 100, **defaults, **options}
        worker = Worker(actions, **options)
        runs.append((worker, asyncio.create_task(worker.run_async())))
        return worker

    try:
        yield start
    finally:
        for worker, _ in runs:
            worker.stop()
        for _, task in runs:
            await asyncio.wait_for(task, timeout=40)


_MISSING = object()


class Schemas:
    """The protocol's schemas (``wsq_devkit.contract``), with an asserting ``check``."""

    errors = staticmethod(contract.errors)
    is_valid = staticmethod(contract.is_valid)

    def check(self, name: str, instance: Any) -> None:
        errors = contract.errors(name, instance)
        assert not errors, f"not a valid {name}: {instance!r}: {errors}"


# KEYS[1]: a node stream, created empty unless it exists (the gateway's own script).
CREATE_NODE_STREAM = script("ensure_stream").body


async def create_node_stream(client: redis.asyncio.Redis, key_prefix: str, node: str) -> None:
    """What a live gateway ``node`` keeps: its stream, empty unless it exists. Workers and
    publishers append to node streams with NOMKSTREAM: without it, what they write is dropped."""
    await client.eval(CREATE_NODE_STREAM, 1, keys_for(key_prefix).node_stream(node))


async def add_to_index(
    client: redis.asyncio.Redis, key_prefix: str, kind: Literal["u", "g"], name: str, *connection_ids: str
) -> None:
    """Add ``connection_ids`` to the set of user (``kind`` "u") or group ("g") ``name``, with their
    count per node, as ``index.lua`` does once a membership's intent is made (gateways, publishers)."""
    for connection_id in connection_ids:
        await run(client, *index_call(keys_for(key_prefix), Intent(kind, connection_id, "t", name), True))


@dataclass(frozen=True)
class Command:
    """One entry of a node stream, as a gateway reads it."""

    entry_id: str
    fields: dict[str, str]

    @property
    def frame(self) -> Any:
        return json.loads(self.fields["frame"])

    @property
    def millis(self) -> int:
        """When Redis appended it (the entry id's time part, on the Redis server's clock)."""
        return int(self.entry_id.split("-")[0])


class FakeGateway:
    """Plays one gateway's side of Redis: appends events exactly as the schema describes them (to
    its shard's inbound partition) and reads the commands workers write for it (each one checked
    against the command schema). Keys of the default number of shards, as the workers'."""

    def __init__(self, client: redis.asyncio.Redis, key_prefix: str, schemas: Schemas, node: str) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.schemas = schemas
        self.node = node
        self.keys = keys_for(key_prefix)
        self.shard = self.keys.shard_of(node)
        self.inbound = self.keys.inbound_stream(self.shard)
        self.dead = self.keys.dead_letters(self.shard)
        self.delayed = self.keys.delayed(self.shard)
        self.out = self.keys.node_stream(node)

    def new_connection_id(self) -> str:
        return new_connection_id(self.node)

    async def create_stream(self) -> None:
        """Create this gateway's stream, empty, unless it exists: a live gateway's always does
        (writers append with NOMKSTREAM), before any of its events."""
        await create_node_stream(self.client, self.key_prefix, self.node)

    async def register(
        self,
        connection_id: str,
        *,
        user_id: str | None = None,
        addr: str = "203.0.113.7",
        since_ms: int = 1795852800123,
    ) -> None:
        """Register the connection in Redis as the gateway does on connect: its hash (``node``,
        ``since``, ``addr``, ``user_id`` unless anonymous), its user's set (and count per node)
        and its node's set."""
        await self.create_stream()
        fields = {"node": self.node, "since": str(since_ms), "addr": addr}
        if user_id is not None:
            fields["user_id"] = user_id
            await add_to_index(self.client, self.key_prefix, "u", user_id, connection_id)
        await self.client.hset(self.keys.connection(connection_id), mapping=xadd_fields(fields))
        await self.client.sadd(self.keys.node_connections(self.node), connection_id)

    async def append(self, fields: dict[str, str]) -> str:
        self.schemas.check("event", fields)
        await self.create_stream()
        return str_reply(await self.client.xadd(self.inbound, xadd_fields(fields)))

    def _event(self, event_type: str, connection_id: str, user_id: str | None, addr: str) -> dict[str, str]:
        fields = {"v": "1", "type": event_type, "connection_id": connection_id, "node": self.node}
        if user_id is not None:
            fields["user_id"] = user_id
        fields["ts"] = "1795852800123"
        fields["addr"] = addr
        return fields

    async def connect(
        self, connection_id: str, *, user_id: str | None = None, addr: str = "203.0.113.7", hook: bool = False
    ) -> str:
        """A connect event; with ``hook`` the gateway waits for an accept or refuse command."""
        fields = self._event("connect", connection_id, user_id, addr)
        if hook:
            fields["hook"] = "1"
        return await self.append(fields)

    def message_event(
        self,
        connection_id: str,
        action: str,
        data: Any = _MISSING,
        *,
        id: str | None = None,
        user_id: str | None = None,
        attempt: int | None = None,
    ) -> dict[str, str]:
        """The fields of a message event, as ``message()`` appends them."""
        frame: dict[str, Any] = {"action": action}
        if data is not _MISSING:
            frame["data"] = data
        if id is not None:
            frame["id"] = id
        fields = self._event("message", connection_id, user_id, "203.0.113.7")
        if attempt is not None:
            fields["attempt"] = str(attempt)
        fields["frame"] = json.dumps(frame)
        return fields

    async def message(
        self,
        connection_id: str,
        action: str,
        data: Any = _MISSING,
        *,
        id: str | None = None,
        user_id: str | None = None,
        attempt: int | None = None,
    ) -> str:
        """Append a message event: the arguments as for ``message_event()``."""
        event = self.message_event(connection_id, action, data, id=id, user_id=user_id, attempt=attempt)
        return await self.append(event)

    async def disconnect(
        self, connection_id: str, close_code: int = 1001, *, user_id: str | None = None
    ) -> str:
        fields = self._event("disconnect", connection_id, user_id, "203.0.113.7")
        fields["close_code"] = str(close_code)
        return await self.append(fields)

    async def commands(self) -> list[Command]:
        entries = str_entries(await self.client.xrange(self.out))
        commands = [Command(entry_id, fields) for entry_id, fields in entries]
        for command in commands:
            self.schemas.check("command", command.fields)
        return commands

    async def frames(self) -> list[Any]:
        return [command.frame for command in await self.commands()]

    async def wait_for_commands(self, count: int, timeout: float = 10.0) -> list[Command]:
        """The node stream once it holds at least ``count`` commands."""

        async def enough() -> list[Command] | None:
            commands = await self.commands()
            return commands if len(commands) >= count else None

        return await wait_until_async(enough, timeout=timeout, message=f"{count} commands on {self.out}")

    async def wait_for_frames(self, count: int, timeout: float = 10.0) -> list[Any]:
        return [command.frame for command in await self.wait_for_commands(count, timeout)]

    async def backlog_done(self) -> bool:
        """Every event handled: this gateway's inbound partition is empty and nothing is pending."""
        if await self.client.xlen(self.inbound):
            return False
        pending = await self.client.xpending(self.inbound, "workers")
        count: int = pending["pending"]
        return count == 0


class ReplyCutter:
    """A TCP proxy to Redis that, once armed with a marker, forwards the first request holding
    it, swallows Redis's answer and cuts that connection when told: the client can't know
    whether Redis ran the request (as after a timeout, or a reset mid-batch)."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.marker: bytes | None = None
        self.held: asyncio.Event = asyncio.Event()
        self._cut_held = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    def cut_held(self) -> None:
        self._cut_held.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        holding = asyncio.Event()
        tasks = {
            asyncio.create_task(self._requests(reader, up_writer, holding)),
            asyncio.create_task(self._answers(up_reader, writer, holding)),
        }
        self._tasks |= tasks
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        writer.transport.abort()  # a reset: no goodbye
        up_writer.transport.abort()

    async def _requests(
        self, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, holding: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            if self.marker is not None and self.marker in data:
                self.marker = None
                holding.set()
            up_writer.write(data)
            await up_writer.drain()

    async def _answers(
        self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, holding: asyncio.Event
    ) -> None:
        while data := await up_reader.read(65536):
            if holding.is_set():  # Redis ran it: the answer never reaches the client
                self.held.set()
                await self._cut_held.wait()
                return
            writer.write(data)
            await writer.drain()
