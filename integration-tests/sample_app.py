"""The worker the end-to-end tests run (``python -m wsq_worker sample_app:worker``).

Its handlers exercise each feature: replies, pushes, errors, slow async and sync work,
and the connect/disconnect hooks, which record what they saw in Redis for the tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from wsq_protocol.cluster import AsyncClient, async_redis
from wsq_worker import Context, Refuse, Retry, Worker
from wsq_worker.settings import connection_from_env

PREFIX = os.environ.get("WSQ_KEY_PREFIX", "wsq")
_redis: AsyncClient | None = None


def recorder() -> AsyncClient:
    """The worker's Redis (a cluster client when WSQ_REDIS_CLUSTER says so)."""
    global _redis  # noqa: PLW0603 - one client per worker process
    if _redis is None:
        settings = connection_from_env()
        _redis = async_redis(settings.redis_url, cluster=settings.redis_cluster)
    return _redis


async def record(kind: str, ctx: Context) -> None:
    """Append what a hook saw to the list ``{prefix}:test:{kind}`` for the test to read."""
    seen = {
        "connection_id": ctx.connection_id,
        "user_id": ctx.user_id,
        "node": ctx.meta.node,
        "close_code": ctx.meta.close_code,
        "pid": os.getpid(),
    }
    await recorder().rpush(f"{PREFIX}:test:{kind}", json.dumps(seen))


async def echo(ctx: Context, data: Any) -> Any:
    return data


async def whoami(ctx: Context, data: Any) -> dict[str, Any]:
    return {"connection_id": ctx.connection_id, "user_id": ctx.user_id, "pid": os.getpid()}


async def slow_async(ctx: Context, data: Any) -> str:
    await asyncio.sleep(float(data))
    return "slept"


def slow_sync(ctx: Context, data: Any) -> str:
    time.sleep(float(data))  # blocks a pool thread, never the event loop
    return "slept"


def sync_echo(ctx: Context, data: Any) -> Any:
    return data


async def push_twice(ctx: Context, data: Any) -> str:
    await ctx.send("pushed", 1)
    await ctx.send("pushed", 2)
    return "done"


async def fail(ctx: Context, data: Any) -> None:
    raise RuntimeError("this handler always fails")


async def join_room(ctx: Context, data: Any) -> bool:
    return await ctx.join(str(data))


async def leave_room(ctx: Context, data: Any) -> bool:
    return await ctx.leave(str(data))


async def say_room(ctx: Context, data: Any) -> int:
    """Tell the rest of a room: everybody in the group but the sender."""
    room, text = data["room"], data["text"]
    return await ctx.publisher.to_group(room).send("said", {"text": text}, exclude=ctx.connection_id)


async def poke(ctx: Context, data: Any) -> str:
    """Push to another connection, wherever it is."""
    await ctx.publisher.to(str(data)).send("poked", {"by": ctx.connection_id})
    return "poked"


async def presence(ctx: Context, data: Any) -> dict[str, Any]:
    """Presence as seen from a worker process."""
    info = await ctx.publisher.connection_info(ctx.connection_id)
    assert info is not None
    return {
        "node": info.node,
        "groups": sorted(info.groups),
        "user_connections": await ctx.publisher.connections(ctx.user_id) if ctx.user_id else [],
    }


async def tracked(ctx: Context, data: Any) -> dict[str, Any]:
    """Note that this frame ran (its connection, id, attempt and worker) in the list
    ``{prefix}:test:processed`` before anything else, so a test can tell frames that were
    processed from frames that were refused; on the first attempt, sleep ``data`` seconds
    when it is a number (a handler to kill its worker in)."""
    seen = {"connection_id": ctx.connection_id, "id": ctx.id, "attempt": ctx.attempt, "pid": os.getpid()}
    await recorder().rpush(f"{PREFIX}:test:processed", json.dumps(seen))
    if ctx.attempt == 1 and isinstance(data, int | float):
        await asyncio.sleep(data)
    return {"attempt": ctx.attempt, "pid": os.getpid()}


async def until_fixed(ctx: Context, data: Any) -> dict[str, Any]:
    """Retry (soon) until the key ``{prefix}:test:fixed`` exists: a bug fixed after its
    messages went to the dead letters, for a replay to run them again."""
    if not await recorder().exists(f"{PREFIX}:test:fixed"):
        raise Retry(0.05)
    return {"fixed": data, "attempt": ctx.attempt}


async def on_connect(ctx: Context) -> None:
    await record("connects", ctx)
    await ctx.send("welcome", {"connection_id": ctx.connection_id})


async def on_disconnect(ctx: Context) -> None:
    await record("disconnects", ctx)


worker = Worker(
    actions={
        "echo": echo,
        "whoami": whoami,
        "slow_async": slow_async,
        "slow_sync": slow_sync,
        "sync_echo": sync_echo,
        "push_twice": push_twice,
        "fail": fail,
        "join_room": join_room,
        "leave_room": leave_room,
        "say_room": say_room,
        "poke": poke,
        "presence": presence,
        "tracked": tracked,
        "until_fixed": until_fixed,
    },
    on_connect=on_connect,
    on_disconnect=on_disconnect,
)


async def fallback(ctx: Context, data: Any) -> dict[str, Any]:
    return {"fallback_for": ctx.action, "data": data}


# Same handlers, plus a default handler for actions without one.
worker_with_default = Worker(
    actions={"echo": echo},
    default=fallback,
)


# The app's sessions (its database, in a real app): session cookie -> user id.
SESSIONS = {"8f3c2a": "ada"}


async def admit(ctx: Context) -> str | None:
    """The connect hook: refuse addresses in the deny list; a session cookie names its user
    (an unknown one is refused), ``?guest=NAME`` names a guest, anyone else is a guest."""
    if ctx.meta.client_addr in os.environ.get("SAMPLE_DENY", "").split(","):
        raise Refuse("not welcome here", code=4403)
    assert ctx.request is not None
    session = ctx.request.cookies.get("session")
    if session is not None:
        if session not in SESSIONS:
            raise Refuse("unknown session", code=4401)
        return SESSIONS[session]
    return f"guest-{ctx.request.query.get('guest') or ctx.connection_id[-6:]}"


# Runs with a gateway started with WSQ_CONNECT_HOOK=true.
worker_with_hook = Worker(actions={"echo": echo, "whoami": whoami}, on_connect=admit)
