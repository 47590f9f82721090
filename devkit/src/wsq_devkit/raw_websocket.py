"""A WebSocket client at the byte level, for tests of what real clients do that aiohttp's
client won't: leave without a close frame (TCP FIN, or RST), send frames of exact sizes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def encode_frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """One whole (final) client frame, masked as RFC 6455 requires of clients."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    repeated = (mask * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
    return head + mask + masked


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame from the server (which never masks): its opcode and payload."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int, target: str
) -> int:
    """Ask for the WebSocket upgrade of ``target`` (path and query): the HTTP status answered."""
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1])


def reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP RST, not a FIN (SO_LINGER 0, then close)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class RawWebSocket:
    """One client socket after its upgrade: frames are written masked, as a client must."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/ws") -> RawWebSocket:
        """Open a TCP connection and upgrade it; AssertionError unless the answer is 101."""
        reader, writer = await asyncio.open_connection(host, port)
        status = await upgrade(reader, writer, host, port, path)
        if status != 101:
            writer.close()
            raise AssertionError(f"the upgrade was refused with HTTP {status}")
        return cls(reader, writer)

    async def send(self, payload: bytes, opcode: int = TEXT) -> None:
        """Write one whole (final, masked) frame."""
        self.writer.write(encode_frame(payload, opcode))
        await self.writer.drain()

    async def receive(self) -> tuple[int, bytes]:
        """The next frame from the server: its opcode and payload."""
        return await read_frame(self.reader)

    async def close_code(self) -> int:
        """Read frames until the server's close frame: its code."""
        while True:
            opcode, payload = await self.receive()
            if opcode == CLOSE:
                (code,) = struct.unpack("!H", payload[:2])
                return int(code)

    async def vanish_with_fin(self) -> None:
        """Leave without a close frame: shut our side down (TCP FIN), then wait for the server
        to close its side (it may first write a close frame, which is read and dropped)."""
        self.writer.write_eof()
        while await self.reader.read(65536):
            pass
        self.writer.close()

    def vanish_with_rst(self) -> None:
        """Leave without a close frame or FIN: reset the connection."""
        reset(self.writer)


def text_of_size(size: int, action: str, frame_id: str) -> bytes:
    """A valid client frame ``{"action", "id", "data": "xxx..."}`` of exactly ``size`` bytes."""
    empty = b'{"action":"%s","id":"%s","data":""}' % (action.encode(), frame_id.encode())
    if size < len(empty):
        raise ValueError(f"a frame of {size} bytes is too small for {empty!r}")
    return empty[:-2] + b"x" * (size - len(empty)) + b'"}'
