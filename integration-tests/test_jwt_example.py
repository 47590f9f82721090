"""examples/jwt/issue_token.py issues the tokens a real gateway accepts (with its secret, audience
and issuer), and only those."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from system_harness import JWT_SECRET, ConnectClient, StartGateway

# tokens checked at the upgrade: not Redis's topology
pytestmark = pytest.mark.single_redis

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "jwt" / "issue_token.py"
AUDIENCE = "wsq-chat"
ISSUER = "https://app.example"


def issue(user_id: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """``python examples/jwt/issue_token.py USER_ID``, as a shell would run it."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("WSQ_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), user_id],
        env={**env, **variables},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_token_the_example_issues_is_accepted_by_the_gateway(
    start_gateway: StartGateway, connect_client: ConnectClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = start_gateway(WSQ_JWT_SECRET=JWT_SECRET, WSQ_JWT_AUDIENCE=AUDIENCE, WSQ_JWT_ISSUER=ISSUER)
    variables = {"WSQ_JWT_SECRET": JWT_SECRET, "WSQ_JWT_AUDIENCE": AUDIENCE, "WSQ_JWT_ISSUER": ISSUER}
    issued = issue("ada", **variables)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    example = importlib.import_module("issue_token")
    assert (await connect_client(f"{gateway.ws_url}?token={token}")).user_id == "ada"
    assert (await connect_client(gateway.ws_url, token=token)).user_id == "ada"  # Authorization: Bearer
    grace = example.issue_token("grace", JWT_SECRET, audience=AUDIENCE, issuer=ISSUER)
    assert (await connect_client(f"{gateway.ws_url}?token={grace}")).user_id == "grace"

    # The handshake's status (401) is asserted on a bare socket.
    async with aiohttp.ClientSession() as session:
        refused = {
            "another secret": example.issue_token("ada", "x" * 32, audience=AUDIENCE, issuer=ISSUER),
            "no audience": issue("ada", WSQ_JWT_SECRET=JWT_SECRET, WSQ_JWT_ISSUER=ISSUER).stdout.strip(),
            "another issuer": example.issue_token(
                "ada", JWT_SECRET, audience=AUDIENCE, issuer="https://evil.example"
            ),
            "expired": example.issue_token(
                "ada",
                JWT_SECRET,
                audience=AUDIENCE,
                issuer=ISSUER,
                now=datetime.now(UTC) - timedelta(hours=1),
            ),
        }
        for why, bad in refused.items():
            assert bad, why
            with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
                await session.ws_connect(gateway.ws_url, params={"token": bad})
            assert raised.value.status == 401, why


def test_the_example_refuses_to_issue_without_a_usable_secret() -> None:
    missing = issue("ada")
    assert missing.returncode == 2
    assert "set WSQ_JWT_SECRET" in missing.stderr
    short = issue("ada", WSQ_JWT_SECRET="too-short")
    assert short.returncode == 2
    assert "shorter than 32 bytes" in short.stderr
