"""Identities are checked at the edge: a signed token whose ``sub`` is not a usable user id is
refused with HTTP 401, and the gateway goes on serving everyone else."""

from __future__ import annotations

import aiohttp
import jwt
import pytest
from system_harness import JWT_SECRET, ConnectClient, StartGateway, StartWorker, token


@pytest.mark.parametrize("per_user_cap", ["0", "3"])
async def test_a_signed_token_whose_sub_is_a_lone_surrogate_gets_401_and_the_gateway_keeps_serving(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    connect_client: ConnectClient,
    per_user_cap: str,
) -> None:
    """A lone surrogate has no UTF-8: it can be no Redis key. Without the cap it used to reach the
    Redis batcher and kill it (no client got answers, /readyz still 200); with the cap, the
    SCARD before the upgrade answered 500."""
    gateway = start_gateway(WSQ_JWT_SECRET=JWT_SECRET, WSQ_MAX_CONNECTIONS_PER_USER=per_user_cap)
    start_worker()
    before = await connect_client(f"{gateway.ws_url}?token={token('ann')}")
    await before.pushed("welcome")

    surrogate = jwt.encode({"sub": "\ud800"}, JWT_SECRET, algorithm="HS256")  # valid JSON: "\ud800"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(gateway.ws_url, params={"token": surrogate})
    assert refused.value.status == 401

    # Those already connected and those who come after are served as before.
    assert await before.request("echo", "still here") == "still here"
    after = await connect_client(f"{gateway.ws_url}?token={token('bob')}")
    await after.pushed("welcome")
    assert after.user_id == "bob"
    assert await after.request("echo", "served") == "served"
    assert gateway.status("/readyz") == 200
    assert gateway.process.running()
