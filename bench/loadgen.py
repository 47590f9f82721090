"""One load-generator process: it holds WebSocket connections and drives them as the runner says.

``python -m bench.loadgen URL[,URL...]`` (several URLs: one per gateway, the connections spread
over them); the runner starts several and sends each one JSON line at a time (``bench.lines``),
every one answered by one line:

* ``{"cmd": "open", "connections": N, "concurrency": C}`` opens N connections, at most C handshakes
  at a time, each complete when its ``$connected`` frame arrived. Answer: the connection ids, how
  many failed (with one reason), and the seconds it took.
* ``{"cmd": "hold"}``: from now on every connection reads and counts what it receives. A frame
  whose ``data`` has ``"t"``, the sender's ``time.monotonic_ns()`` (CLOCK_MONOTONIC, the same clock
  in every process of the machine), adds its send-to-receipt latency to the histogram.
* ``{"cmd": "count"}``: frames received so far; ``{"cmd": "collect"}``: the count, the histogram
  and the first and last receipt times, which it then zeroes.
* ``{"cmd": "roundtrip", "inflight": K, "start_ns": T, "warmup_s": W, "duration_s": D}``: from T
  every connection keeps K echo requests outstanding, sending the next one as soon as a reply
  arrives. Replies that arrive between T+W and T+W+D are counted and their latency recorded.
  Each request's id is its send time, so a reply says how long it took.
* ``{"cmd": "close"}``: the process exits (the kernel closes its sockets).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp
import orjson
import uvloop

from bench.lines import Command, serve
from bench.stats import Histogram

Socket = aiohttp.ClientWebSocketResponse[Literal[False]]

PAYLOAD = {"text": "The quick brown fox jumps over the lazy dog, 64 bytes of chat text."}
_FRAME_HEAD = b'{"action":"echo","data":' + orjson.dumps(PAYLOAD) + b',"id":"'
_FRAME_TAIL = b'"}'
_TEXT = aiohttp.WSMsgType.TEXT
CONNECT_TIMEOUT_S = 60.0
GRACE_S = 10.0  # after the window, how long outstanding replies are waited for before they count as lost


class Received:
    """What the held connections of this process received since the last ``collect``."""

    __slots__ = ("count", "first_ns", "hist", "last_ns")

    def __init__(self) -> None:
        self.count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.hist = Histogram()

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.count,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "hist": self.hist.to_json(),
        }


class Roundtrips:
    """Replies counted in the window (their latencies in ``hist``), wrong answers, replies never seen."""

    __slots__ = ("errors", "first_error", "hist", "lost", "sent")

    def __init__(self) -> None:
        self.hist = Histogram()
        self.sent = 0
        self.errors = 0
        self.lost = 0
        self.first_error = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "replies": self.hist.total,
            "sent": self.sent,
            "errors": self.errors,
            "lost": self.lost,
            "first_error": self.first_error,
            "hist": self.hist.to_json(),
        }


class LoadGenerator:
    """Connections to ``urls``: with several (one per gateway), the i-th connection opened goes
    to the (i mod n)-th."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.sockets: list[Socket] = []
        self.received = Received()
        self.readers: list[asyncio.Task[None]] = []

    async def handle(self, command: Command) -> Mapping[str, Any]:
        match command["cmd"]:
            case "open":
                return await self.open(command["connections"], command["concurrency"])
            case "hold":
                self.readers = [asyncio.create_task(self._hold(ws)) for ws in self.sockets]
                return {"ev": "holding"}
            case "count":
                return {"ev": "count", "received": self.received.count}
            case "collect":
                received, self.received = self.received, Received()
                return {"ev": "collected", **received.to_json()}
            case "roundtrip":
                return await self.roundtrip(
                    command["inflight"], command["start_ns"], command["warmup_s"], command["duration_s"]
                )
        raise ValueError(f"unknown command {command!r}")

    async def open(self, connections: int, concurrency: int) -> Mapping[str, Any]:
        started = time.monotonic()
        gate = asyncio.Semaphore(concurrency)
        ids: list[str] = []
        failures: list[str] = []

        async def open_one(index: int) -> None:
            async with gate:
                try:
                    url = self.urls[index % len(self.urls)]
                    ws = await self.session.ws_connect(url, autoping=True, decode_text=False)
                    hello = await ws.receive(timeout=CONNECT_TIMEOUT_S)
                    doc = orjson.loads(hello.data)
                    if doc["action"] != "$connected":
                        raise ValueError(f"first frame was {doc!r}, not $connected")
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError, TypeError, KeyError) as exc:
                    failures.append(repr(exc))
                    return
                self.sockets.append(ws)
                ids.append(doc["data"]["connection_id"])

        await asyncio.gather(*(open_one(index) for index in range(connections)))
        return {
            "ev": "opened",
            "ids": ids,
            "failed": len(failures),
            "first_failure": failures[0] if failures else "",
            "seconds": time.monotonic() - started,
        }

    async def _hold(self, ws: Socket) -> None:
        while True:
            msg = await ws.receive()
            if msg.type is not _TEXT:
                return
            now = time.monotonic_ns()
            data = orjson.loads(msg.data).get("data")
            if type(data) is dict and "t" in data:
                counts = self.received  # replaced by each collect
                counts.hist.add((now - data["t"]) / 1000)
                if not counts.count:
                    counts.first_ns = now
                counts.count += 1
                counts.last_ns = now

    async def roundtrip(
        self, inflight: int, start_ns: int, warmup_s: float, duration_s: float
    ) -> Mapping[str, Any]:
        result = Roundtrips()
        window_from = start_ns + int(warmup_s * 1e9)
        window_to = window_from + int(duration_s * 1e9)
        await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
        await asyncio.gather(
            *(self._roundtrips(ws, inflight, window_from, window_to, result) for ws in self.sockets)
        )
        return {"ev": "roundtrip", **result.to_json()}

    @staticmethod
    async def _roundtrips(
        ws: Socket, inflight: int, window_from: int, window_to: int, result: Roundtrips
    ) -> None:
        give_up = window_to + int(GRACE_S * 1e9)
        outstanding = 0
        for _ in range(inflight):
            await ws.send_frame(_FRAME_HEAD + str(time.monotonic_ns()).encode() + _FRAME_TAIL, _TEXT)
            outstanding += 1
        result.sent += inflight
        while outstanding:
            try:
                msg = await ws.receive(timeout=max(0.001, (give_up - time.monotonic_ns()) / 1e9))
            except TimeoutError:
                result.first_error = result.first_error or f"no reply within {GRACE_S}s after the window"
                break
            if msg.type is not _TEXT:
                result.first_error = result.first_error or f"the socket ended: {msg.type.name} {msg.data!r}"
                break
            now = time.monotonic_ns()
            doc = orjson.loads(msg.data)
            frame_id = doc.get("id")
            if frame_id is None:  # a push, not a reply
                continue
            outstanding -= 1
            if doc.get("action") != "echo" or doc.get("data") != PAYLOAD:
                result.errors += 1
                result.first_error = result.first_error or msg.data.decode(errors="replace")[:200]
            elif window_from <= now < window_to:
                result.hist.add((now - int(frame_id)) / 1000)
            if now < window_to:
                await ws.send_frame(_FRAME_HEAD + str(time.monotonic_ns()).encode() + _FRAME_TAIL, _TEXT)
                outstanding += 1
                result.sent += 1
        result.lost += outstanding

    async def close(self) -> None:
        for reader in self.readers:
            reader.cancel()
        await self.session.close()


async def main(urls: str) -> None:
    generator = LoadGenerator(urls.split(","))
    try:
        await serve(generator.handle)
    finally:
        await generator.close()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
