"""A chat room on wsq: the worker side.

Run it next to a gateway and a Redis (``python3 dev.py demo`` starts all three)::

    WSQ_REDIS_URL=redis://127.0.0.1:6379/0 python -m wsq_worker examples.chat.worker:worker

Browsers talk to the gateway; every frame they send becomes an event in Redis, and this
worker answers them. The browser side is ``static/chat.js`` (on the JavaScript client,
``clients/js``). The actions:

``set_name``  ``{"name": "Ada"}``   pick a nickname (1 to 32 characters)
``say``       ``{"text": "hi"}``    post a message (1 to 500 characters) to everyone

Both reply ``{"ok": true, ...}``, or ``{"ok": false, "error": "..."}`` when the input is
not acceptable, so the page can show the reason. Pushes from the worker to the pages:
``welcome`` (to a new connection), ``joined``, ``renamed``, ``message`` (with the sender's
``connection_id``: a page compares it with its own, from ``$connected``) and ``left`` (to
everyone).

A reply carries the action of the frame it answers and its id (``say``, ``r7``); a push has
an action of its own and no id. No push is named like a request (``say`` is answered, the
text it posts is pushed as ``message``), so the page dispatches pushes by action and answers
by id, and never shows its own reply as a chat message (PUSHES below; test_chat_workers.py
checks it).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from wsq_protocol.cluster import AsyncClient, async_redis
from wsq_worker import Context, Worker
from wsq_worker.settings import connection_from_env

MAX_NAME = 32
MAX_TEXT = 500

# Nicknames by connection id, in a Redis hash: every event goes to any one of the worker
# processes, so state that must outlive one event lives outside the process (a database
# or Redis), never in a module-level dict. This app uses the Redis wsq already needs.
NAMES_KEY = f"{os.environ.get('WSQ_KEY_PREFIX', 'wsq')}:chat:names"
_redis: AsyncClient | None = None


def names() -> AsyncClient:
    """The app's Redis client (created on first use, shared by all handlers): wsq's own
    settings (WSQ_REDIS_URL, and WSQ_REDIS_CLUSTER for a cluster client)."""
    global _redis  # noqa: PLW0603 - one client per worker process
    if _redis is None:
        settings = connection_from_env()
        _redis = async_redis(settings.redis_url, cluster=settings.redis_cluster, decode_responses=True)
    return _redis


Reply = dict[str, Any]


def _field(data: object, key: str, limit: int) -> str | None:
    """``data[key]`` as a stripped string of 1..limit characters, or None if it isn't one."""
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if 1 <= len(value) <= limit else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def set_name(ctx: Context, data: object) -> Reply:
    name = _field(data, "name", MAX_NAME)
    if name is None:
        # A plain reply, not an exception: exceptions become `handler_error` for the
        # client and a traceback in our log, which is for bugs, not for bad input.
        return {"ok": False, "error": f"a name is 1 to {MAX_NAME} characters"}
    old = await names().hget(NAMES_KEY, ctx.connection_id)
    await names().hset(NAMES_KEY, ctx.connection_id, name)
    everyone = ctx.publisher.broadcast()
    if old is None:
        await everyone.send("joined", {"name": name, "at": _now()})
    elif old != name:
        await everyone.send("renamed", {"old": old, "name": name, "at": _now()})
    return {"ok": True, "name": name}


async def say(ctx: Context, data: object) -> Reply:
    name = await names().hget(NAMES_KEY, ctx.connection_id)
    if name is None:
        return {"ok": False, "error": "choose a name first"}
    text = _field(data, "text", MAX_TEXT)
    if text is None:
        return {"ok": False, "error": f"a message is 1 to {MAX_TEXT} characters"}
    # broadcast() reaches every connection on every gateway, the sender's included; the
    # sender's connection id lets each page tell its own messages from the others'.
    message = {"from": name, "connection_id": ctx.connection_id, "text": text, "at": _now()}
    await ctx.publisher.broadcast().send("message", message)
    return {"ok": True}


async def on_connect(ctx: Context) -> None:
    # ctx.send() pushes to this connection only.
    chatting = await names().hlen(NAMES_KEY)
    await ctx.send("welcome", {"connection_id": ctx.connection_id, "chatting": chatting})


async def on_disconnect(ctx: Context) -> None:
    # Read and delete in one transaction: only one worker ever announces the departure.
    async with names().pipeline(transaction=True) as pipe:
        pipe.hget(NAMES_KEY, ctx.connection_id)
        pipe.hdel(NAMES_KEY, ctx.connection_id)
        name, _ = await pipe.execute()
    if name is not None:
        await ctx.publisher.broadcast().send("left", {"name": name, "at": _now()})


# The actions of the pushes above: none is a request's (the keys of `actions` below).
PUSHES = frozenset({"welcome", "joined", "renamed", "message", "left"})

# `python -m wsq_worker examples.chat.worker:worker` imports this object and runs it.
# A frame whose action is not listed here is answered with an `unknown_action` $error.
worker = Worker(
    actions={"set_name": set_name, "say": say},
    on_connect=on_connect,
    on_disconnect=on_disconnect,
)
