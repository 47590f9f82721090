"""The baseline: a bare aiohttp server doing the gateway's transport work, without Redis or workers.

``python -m bench.baseline_server PORT`` serves, on 127.0.0.1:

* ``/ws``: a ``$connected`` frame first, as the gateway sends; then every text frame is written
  back as it came (the echo baseline of the roundtrip workload);
* ``POST /broadcast``: the request body, one frame, written to every socket in one loop (fanout);
* ``POST /push?seconds=S``: frames written to the sockets in turn for S seconds, each carrying its
  send time (push); the answer says how many, and when the first and last were written;
* ``GET /healthz``.

The sockets have the gateway's settings: text frames not decoded to ``str``, no compression,
64 KiB frames at most, a heartbeat every 30 s; the loop is uvloop's.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import time

import orjson
import uvloop
from aiohttp import WSMsgType, web


class Sockets:
    """The open sockets."""

    def __init__(self) -> None:
        self.open: set[web.WebSocketResponse] = set()


SOCKETS = web.AppKey("sockets", Sockets)
_TEXT = WSMsgType.TEXT
_YIELD_EVERY = 256  # the push loop lets the event loop run (reads, pings) this often


async def websocket(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(
        heartbeat=30.0, compress=False, max_msg_size=65536, decode_text=False, timeout=2.0
    )
    await ws.prepare(request)
    sockets = request.app[SOCKETS]
    connection_id = f"bare.{id(ws):x}"
    await ws.send_frame(
        orjson.dumps({"action": "$connected", "data": {"connection_id": connection_id, "user_id": None}}),
        _TEXT,
    )
    sockets.open.add(ws)
    try:
        async for msg in ws:
            if msg.type is _TEXT:
                await ws.send_frame(msg.data, _TEXT)
    finally:
        sockets.open.discard(ws)
    return ws


async def broadcast(request: web.Request) -> web.Response:
    frame = await request.read()
    sockets = list(request.app[SOCKETS].open)
    for ws in sockets:
        await ws.send_frame(frame, _TEXT)
    return web.json_response({"sent": len(sockets)})


async def push(request: web.Request) -> web.Response:
    seconds = float(request.query["seconds"])
    sockets = list(request.app[SOCKETS].open)
    first_ns = time.monotonic_ns()
    stop_ns = first_ns + int(seconds * 1e9)
    sent = 0
    for ws in itertools.cycle(sockets):
        now = time.monotonic_ns()
        if now >= stop_ns:
            break
        frame = b'{"action":"push","data":{"t":%d,"seq":%d}}' % (now, sent)
        await ws.send_frame(frame, _TEXT)
        sent += 1
        if sent % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
    return web.json_response(
        {"sent": sent, "failed": 0, "first_failure": "", "first_ns": first_ns, "last_ns": time.monotonic_ns()}
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "connections": len(request.app[SOCKETS].open)})


def create_app() -> web.Application:
    app = web.Application()
    app[SOCKETS] = Sockets()
    app.router.add_get("/ws", websocket)
    app.router.add_post("/broadcast", broadcast)
    app.router.add_post("/push", push)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    runner = web.AppRunner(create_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
