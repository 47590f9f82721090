"""serve_static: folders mounted at URL prefixes, the longest prefix first, nothing outside them."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsq_devkit.static import CLIENT_JS, serve_static


@pytest.fixture
def site(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "page").mkdir()
    (tmp_path / "page" / "index.html").write_text("the page")
    (tmp_path / "page" / "lib").mkdir()
    (tmp_path / "page" / "lib" / "x.js").write_text("shadowed")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "x.js").write_text("export const x = 1;")
    (tmp_path / "secret.txt").write_text("secret")
    server = serve_static({"/": tmp_path / "page", "/lib/": tmp_path / "lib"})
    yield server.server_port
    server.shutdown()
    server.server_close()


def get(port: int, path: str) -> tuple[int, str, str]:
    """A raw GET (no client-side normalisation of ``..``): status, content type, body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def test_mounts(site: int) -> None:
    assert get(site, "/")[2] == "the page"
    assert get(site, "/index.html?gateway=ws://x")[2] == "the page"
    status, content_type, body = get(site, "/lib/x.js")
    assert (status, body) == (200, "export const x = 1;"), "the longest prefix wins"
    assert "javascript" in content_type, "ES modules need a JavaScript MIME type"
    for outside in ("/../secret.txt", "/lib/../../secret.txt", "/lib/%2e%2e/%2e%2e/secret.txt"):
        assert get(site, outside)[0] == 404, outside


def test_the_client_package_is_where_the_pages_import_it_from() -> None:
    assert (CLIENT_JS / "index.js").is_file()
    assert (CLIENT_JS / "index.d.ts").is_file()
