"""A WebSocket client at the byte level, for tests of what real clients do that aiohttp's
client won't: leave without a close frame (TCP FIN, or RST), send frames of exact sizes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

TEXT = 0x1
CLOSE = 0x8


class RawWebSocket:
    """One client socket after its upgrade: frames are written masked, as a client must."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/ws") -> RawWebSocket:
        """Open a TCP connection and upgrade it; AssertionError unless the answer is 101."""
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            writer.close()
            raise AssertionError(f"the upgrade was refused: {head.decode(errors='replace')}")
        return cls(reader, writer)

    async def send(self, payload: bytes, opcode: int = TEXT) -> None:
        """Write one whole (final, masked) frame."""
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(byte ^ mask[n % 4] for n, byte in enumerate(payload))
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    async def receive(self) -> tuple[int, bytes]:
        """The next frame from the server (which never masks): its opcode and payload."""
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

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
        """Leave without a close frame or FIN: reset the connection (SO_LINGER 0, then close)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


def text_of_size(size: int, action: str, frame_id: str) -> bytes:
    """A valid client frame ``{"action", "id", "data": "xxx..."}`` of exactly ``size`` bytes."""
    empty = b'{"action":"%s","id":"%s","data":""}' % (action.encode(), frame_id.encode())
    if size < len(empty):
        raise ValueError(f"a frame of {size} bytes is too small for {empty!r}")
    return empty[:-2] + b"x" * (size - len(empty)) + b'"}'
