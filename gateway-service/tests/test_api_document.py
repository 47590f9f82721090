"""protocol/openapi.json is valid OpenAPI 3.1 and describes exactly what the API app serves,
with every error code it answers (also listed in the README)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from pydantic import ValidationError

from wsq_gateway import Settings, create_app
from wsq_gateway.api import create_api_app
from wsq_gateway.api.errors import ERRORS
from wsq_gateway.cli import settings_errors
from wsq_gateway.state import GATEWAY

pytestmark = pytest.mark.single_redis

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT: dict[str, Any] = json.loads((ROOT / "protocol" / "openapi.json").read_text())


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    validate(DOCUMENT)


def test_every_route_is_documented_and_every_documented_path_served() -> None:
    settings = Settings(api_keys="a-key-of-sixteen-chars", redis_url="redis://127.0.0.1:1/0")
    app = create_api_app(create_app(settings)[GATEWAY])  # nothing connects before it runs
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}
    assert served == documented


def test_every_error_code_is_documented() -> None:
    codes = DOCUMENT["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
    assert codes == list(ERRORS)
    for code, kind in ERRORS.items():
        assert f"| `{code}` | {kind.status} |" in DOCUMENT["info"]["description"]
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## HTTP server API") : readme.index("## Running the gateway")]
    listed = set(re.findall(r"`([a-z_]+)`", section))
    assert set(ERRORS) <= listed, set(ERRORS) - listed


def test_the_keys_never_show() -> None:
    settings = Settings(api_keys="first-secret-key-0001,second-secret-key-002")
    assert settings.api_key_list == (b"first-secret-key-0001", b"second-secret-key-002")
    assert "secret-key" not in repr(settings)
    with pytest.raises(ValidationError, match="key 2 must be") as error:
        Settings(api_keys="first-secret-key-0001,short")
    (line,) = settings_errors(error.value)  # what wsq-gateway prints
    assert line.startswith("invalid setting WSQ_API_KEYS: ")
    assert "secret" not in line
    assert "short" not in line
    with pytest.raises(ValueError, match="WSQ_API_PORT must differ"):
        Settings(api_keys="first-secret-key-0001", port=9000, api_port=9000)
    assert Settings(api_keys="").api_keys is None
