"""The Channels peer's consumers, doing what wsq's gateway and echo worker do.

* ``Gateway`` (in daphne) holds a socket: it sends a ``$connected`` frame whose connection id is
  its channel name, checks that each client frame is a JSON object with an action, and hands it to
  the ``echo-worker`` channel; it writes to the socket, verbatim, what arrives for it (replies,
  pushes, group sends). Every socket is in the group ``all``: Channels' broadcast.
* ``EchoWorker`` (in ``runworker echo-worker``) answers each request with its data, through the
  channel layer to the socket's channel.
"""

# mypy: disable-error-code="import-not-found,import-untyped,misc"
# Django and Channels exist only in bench/.venv-peers, so mypy (in .venv) sees them as Any.

from __future__ import annotations

import json
from typing import Any, ClassVar

from channels.consumer import AsyncConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

WORKER_CHANNEL = "echo-worker"
EVERYONE = "all"


class Gateway(AsyncWebsocketConsumer):
    groups: ClassVar[list[str]] = [EVERYONE]  # joined before connect() runs, left on disconnect

    async def connect(self) -> None:
        await self.accept()
        hello = {"action": "$connected", "data": {"connection_id": self.channel_name, "user_id": None}}
        await self.send(text_data=json.dumps(hello))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            frame = json.loads(text_data or "")
            valid = isinstance(frame, dict) and isinstance(frame.get("action"), str)
        except ValueError:
            valid = False
        if not valid:
            error = {"code": "invalid_frame", "message": "not a frame"}
            await self.send(text_data=json.dumps({"action": "$error", "data": error}))
            return
        message = {"type": "echo", "reply_to": self.channel_name, "text": text_data}
        await self.channel_layer.send(WORKER_CHANNEL, message)

    async def push_frame(self, event: dict[str, Any]) -> None:
        """``{"type": "push.frame", "text": ...}``: a frame for this socket, written as it is."""
        await self.send(text_data=event["text"])


class EchoWorker(AsyncConsumer):
    async def echo(self, message: dict[str, Any]) -> None:
        frame = json.loads(message["text"])
        reply = json.dumps({"action": frame["action"], "data": frame.get("data"), "id": frame.get("id")})
        await self.channel_layer.send(message["reply_to"], {"type": "push.frame", "text": reply})
