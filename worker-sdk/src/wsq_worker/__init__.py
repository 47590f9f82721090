"""wsq worker SDK: handle the WebSocket messages of the wsq gateway, and push to connections.

    from wsq_worker import Worker

    async def chat_text(ctx, data):
        await ctx.publisher.broadcast().send("chat_message", data)  # a push: an action of its own
        return {"stored": True}  # the reply: action chat_text, with the frame's id

    worker = Worker({"chat_text": chat_text})   # run it: wsq-worker app:worker

A handler may ``raise Retry(delay)`` to run again later, and ``on_connect`` may ``raise
Refuse(reason, code)`` under the gateway's connect hook.

``Publisher``/``AsyncPublisher`` push to connections, users, groups or everyone from any other
process, manage group membership and answer presence questions.
"""

from wsq_worker.context import Context, Meta, Request
from wsq_worker.exceptions import (
    ProtocolError,
    PublishError,
    RedisUnusableError,
    Refuse,
    Retry,
    SettingsError,
    WorkerFailedError,
    WsqError,
)
from wsq_worker.presence import ConnectionInfo
from wsq_worker.publisher import AsyncPublisher, AsyncTarget, Publisher, Target
from wsq_worker.worker import Handler, LifecycleHandler, Periodic, Worker

__version__ = "0.2.0"

__all__ = [
    "AsyncPublisher",
    "AsyncTarget",
    "ConnectionInfo",
    "Context",
    "Handler",
    "LifecycleHandler",
    "Meta",
    "Periodic",
    "ProtocolError",
    "PublishError",
    "Publisher",
    "RedisUnusableError",
    "Refuse",
    "Request",
    "Retry",
    "SettingsError",
    "Target",
    "Worker",
    "WorkerFailedError",
    "WsqError",
    "__version__",
]
