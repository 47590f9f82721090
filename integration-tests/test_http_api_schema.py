"""schemathesis against a live gateway: requests generated from protocol/openapi.json (valid ones
and invalid ones) never get a 5xx, and every answer has a documented status and matches its
documented schema.

Cheap on purpose (CI's budget): one gateway for the module, on a single Redis (the document
does not depend on the topology), a few derandomized examples per operation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from system_harness import GatewayProcess

from wsq_devkit import ManagedProcess, RedisServer, free_port

pytestmark = pytest.mark.single_redis

OPENAPI = Path(__file__).resolve().parents[1] / "protocol" / "openapi.json"
KEY = "schemathesis-api-key-0123456789"
EXAMPLES = 25

schema = schemathesis.openapi.from_path(OPENAPI)


@pytest.fixture(scope="module")
def api_url(redis_server: RedisServer) -> Iterator[str]:
    """The API of one gateway process, shared by every operation's test."""
    port, api_port = free_port(), free_port()
    env = {
        "WSQ_REDIS_URL": redis_server.url,
        "WSQ_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "WSQ_HOST": "127.0.0.1",
        "WSQ_PORT": str(port),
        "WSQ_NODE_ID": "gwschema",
        "WSQ_API_KEYS": KEY,
        "WSQ_API_PORT": str(api_port),
        "WSQ_LOG_FORMAT": "console",
        "PYTHONUNBUFFERED": "1",
    }
    process = ManagedProcess.python_module("gateway-schema", "wsq_gateway", env=env).start()
    try:
        GatewayProcess(process, port, "gwschema").wait_ready()
        yield f"http://127.0.0.1:{api_port}"
        assert process.running(), process.output()
        assert "Traceback" not in process.output(), process.output()
    finally:
        process.stop()
        process.close()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_api_conforms_to_its_document(case: schemathesis.Case[Any], api_url: str) -> None:
    case.call_and_validate(
        base_url=api_url,
        headers={"Authorization": f"Bearer {KEY}"},
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )
