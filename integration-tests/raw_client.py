"""A WebSocket client on a bare TCP stream, for the faults a well-behaved client never makes.

aiohttp's client always ends politely; this one can vanish with a FIN and no close frame,
with an RST (SO_LINGER 0), or by going silent (it stops reading and answering pings). It
also writes many frames in one TCP write, so a burst reaches the gateway at once.

A task reads every frame the gateway sends into ``frames`` (answering pings, unless silent)
and resolves ``closed`` with the close code: the gateway's, or 1006 when the stream ended
without a close frame.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import orjson

from wsq_devkit.raw_websocket import CLOSE, PING, PONG, TEXT, encode_frame, read_frame, reset, upgrade

NO_CLOSE_FRAME = 1006


class HandshakeRefused(Exception):
    """The gateway answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upgrade refused with HTTP {status}")
        self.status = status


def text_frame(action: str, data: Any = None, id: str | None = None) -> bytes:
    frame: dict[str, Any] = {"action": action, "data": data}
    if id is not None:
        frame["id"] = id
    return encode_frame(orjson.dumps(frame))


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str = "") -> None:
        self.label = label  # a name for messages
        self._reader = reader
        self._writer = writer
        self.frames: list[dict[str, Any]] = []  # every text frame received, in order
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.silent = False
        self._writing = True  # False once this side ended its stream
        self.connection_id = ""
        self.user_id: str | None = None
        self.hello: dict[str, Any] = {}  # $connected's data
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, port: int, path: str = "/ws", *, query: str = "", label: str = "", timeout: float = 10.0
    ) -> RawClient:
        """Upgrade, read ``$connected``, then read the gateway's frames in a task of its own."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, label)
        try:
            async with asyncio.timeout(timeout):
                status = await upgrade(
                    reader, writer, "127.0.0.1", port, path + (f"?{query}" if query else "")
                )
                if status != 101:
                    raise HandshakeRefused(status)
                opcode, payload = await read_frame(reader)
        except BaseException:
            writer.transport.abort()
            raise
        hello = orjson.loads(payload)
        assert opcode == TEXT, (opcode, payload)
        assert hello["action"] == "$connected", hello
        client.hello = hello["data"]
        client.connection_id = hello["data"]["connection_id"]
        client.user_id = hello["data"]["user_id"]
        client._task = asyncio.create_task(client._read_all(), name=f"raw-client-{client.connection_id}")
        return client

    async def _read_all(self) -> None:
        code = NO_CLOSE_FRAME
        try:
            while True:
                opcode, payload = await read_frame(self._reader)
                if opcode == TEXT:
                    self.frames.append(orjson.loads(payload))
                elif opcode == PING and not self.silent:
                    self._writer.write(encode_frame(payload, PONG))
                elif opcode == CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    if self._writing:  # answer it, as RFC 6455 asks
                        self._writer.write(encode_frame(payload[:2], CLOSE))
                    self._writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            if not self.closed.done():
                self.closed.set_result(code)

    def send(self, *frames: bytes) -> None:
        """Write the (encoded) frames in one write, so they reach the gateway together."""
        assert self._writing, "this client already ended its stream"
        self._writer.write(b"".join(frames))

    def answers(self, id: str) -> list[dict[str, Any]]:
        """The frames received so far that answer the frame with this id."""
        return [frame for frame in self.frames if frame.get("id") == id]

    async def close(self, code: int = 1000) -> int:
        """Close politely (a close frame with ``code``); the gateway's answering code."""
        if self._writing:
            self._writer.write(encode_frame(struct.pack("!H", code), CLOSE))
            self._writing = False
        return await asyncio.wait_for(asyncio.shield(self.closed), 10)

    def vanish(self, how: str) -> None:
        """Leave without a close frame: ``fin`` (end the TCP stream: a FIN, never an RST,
        whatever is still unread), ``rst`` (abort it with SO_LINGER 0), or ``silence`` (keep it
        open, stop reading and answering pings)."""
        if how == "fin":
            self._writing = False
            self._writer.write_eof()
        elif how == "rst":
            self._writing = False
            if self._task is not None:
                self._task.cancel()
            reset(self._writer)
        elif how == "silence":
            self.silent = True
            transport = self._writer.transport
            assert isinstance(transport, asyncio.ReadTransport)
            transport.pause_reading()
        else:
            raise ValueError(f"unknown way to vanish: {how}")

    def abort(self) -> None:
        """Drop the stream at once (clean-up)."""
        self._writing = False
        if self._task is not None:
            self._task.cancel()
        self._writer.transport.abort()
