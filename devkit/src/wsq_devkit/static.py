"""A static file server for pages under test and the demo: folders mounted at URL prefixes
(the chat page at ``/``, the JavaScript client package at ``/wsq-client/``), never cached."""

from __future__ import annotations

import posixpath
import threading
import urllib.parse
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

Route = Callable[[], tuple[int, bytes]]
"""A dynamic GET route: returns its HTTP status and JSON body."""

# Where the JavaScript client's ES modules are served from, in the demo and the tests.
CLIENT_JS = Path(__file__).resolve().parents[3] / "clients" / "js" / "src"
CLIENT_JS_PREFIX = "/wsq-client/"


class _MountHandler(SimpleHTTPRequestHandler):
    mounts: ClassVar[dict[str, Path]] = {}  # URL prefix ("/", "/wsq-client/") -> folder, set per server
    routes: ClassVar[dict[str, Route]] = {}  # exact path -> its JSON answer, before the folders

    def do_GET(self) -> None:
        route = self.routes.get(urllib.parse.urlsplit(self.path).path)
        if route is None:
            super().do_GET()
            return
        status, body = route()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def translate_path(self, path: str) -> str:
        # normpath drops any "..": nothing outside the mounted folders is ever served.
        path = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(path).path))
        for prefix in sorted(self.mounts, key=len, reverse=True):  # the longest prefix wins
            if (path + "/").startswith(prefix):
                parts = [part for part in path[len(prefix) :].split("/") if part]
                return str(self.mounts[prefix].joinpath(*parts))
        return "/nonexistent"

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")  # edit a file, reload, see the change
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the other processes' logs


def serve_static(
    mounts: dict[str, Path], host: str = "127.0.0.1", port: int = 0, routes: dict[str, Route] | None = None
) -> ThreadingHTTPServer:
    """Serve ``mounts`` (URL prefix -> folder), and ``routes`` (path -> JSON), on host:port from a
    background thread; port 0 picks a free one (``server.server_port``). Stop it with
    ``shutdown()`` and ``server_close()``."""
    handler = type(
        "MountHandler",
        (_MountHandler,),
        {"mounts": {p: Path(d) for p, d in mounts.items()}, "routes": dict(routes or {})},
    )
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="static", daemon=True).start()
    return server
