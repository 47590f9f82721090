"""Connection limits under a burst, with real gateway processes: a burst of concurrent upgrades
opens exactly the limit, the rest get HTTP 429, and closing them gives every slot back."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import orjson
import redis
from system_harness import JWT_SECRET, StartGateway, token

from wsq_devkit import wait_until, wait_until_async
from wsq_protocol.keys import Keys

LIMIT = 20
BURST = 40

Outcome = tuple[str, Any]  # ("open", the socket), ("http", status) or ("close", code)


async def attempt(session: aiohttp.ClientSession, url: str, user: str | None) -> Outcome:
    """Open a socket (as ``user``, with a token) and read its first frame: open ($connected),
    refused before the upgrade, or closed right after it."""
    params = {"token": token(user)} if user is not None else {}
    try:
        ws = await session.ws_connect(url, params=params)
    except aiohttp.WSServerHandshakeError as exc:
        return ("http", exc.status)
    msg = await ws.receive(timeout=10)
    if msg.type is aiohttp.WSMsgType.TEXT and orjson.loads(msg.data)["action"] == "$connected":
        return ("open", ws)
    await ws.close()
    return ("close", msg.data)


async def burst(session: aiohttp.ClientSession, urls: list[str], users: list[str | None]) -> list[Outcome]:
    """Upgrade to each url at once, as the user of the same rank."""
    return await asyncio.gather(*(attempt(session, url, user) for url, user in zip(urls, users, strict=True)))


def sockets(outcomes: list[Outcome]) -> list[aiohttp.ClientWebSocketResponse]:
    return [value for kind, value in outcomes if kind == "open"]


def refusals(outcomes: list[Outcome]) -> Counter[tuple[str, Any]]:
    return Counter((kind, value) for kind, value in outcomes if kind != "open")


async def close_all(outcomes: list[Outcome]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets(outcomes)))


async def opens_exactly(
    session: aiohttp.ClientSession, urls: list[str], users: list[str | None], count: int
) -> None:
    """Once the gateways have seen earlier sockets closed: ``count`` upgrades open, one more is 429."""

    async def all_open() -> list[Outcome] | None:
        outcomes = await burst(session, urls[:count], users[:count])
        if len(sockets(outcomes)) == count:
            return outcomes
        await close_all(outcomes)
        return None

    outcomes = await wait_until_async(all_open, timeout=10, interval=0.1, message=f"{count} sockets open")
    one_more = await burst(session, urls[count : count + 1], users[count : count + 1])
    assert refusals(one_more) == {("http", 429): 1}, "the count is exact"
    await close_all(outcomes)


async def test_a_burst_from_one_address_opens_exactly_the_limit(
    start_gateway: StartGateway, session: aiohttp.ClientSession
) -> None:
    """Many users behind one address (a NAT): each upgrade awaits its user's check in Redis
    before it is upgraded, which is where the address's count used to be passed."""
    gateway = start_gateway(WSQ_MAX_CONNECTIONS_PER_ADDR=str(LIMIT), WSQ_JWT_SECRET=JWT_SECRET)
    urls = [gateway.ws_url] * BURST
    users: list[str | None] = [f"user-{n}" for n in range(BURST)]
    outcomes = await burst(session, urls, users)
    assert len(sockets(outcomes)) == LIMIT
    assert refusals(outcomes) == {("http", 429): BURST - LIMIT}
    await close_all(outcomes)
    await opens_exactly(session, urls, users, LIMIT)

    anonymous = start_gateway(WSQ_MAX_CONNECTIONS_PER_ADDR=str(LIMIT))
    outcomes = await burst(session, [anonymous.ws_url] * BURST, [None] * BURST)
    assert (len(sockets(outcomes)), refusals(outcomes)) == (LIMIT, {("http", 429): BURST - LIMIT})
    await close_all(outcomes)


async def test_a_burst_of_one_user_gets_429_past_the_limit_and_never_more_across_gateways(
    start_gateway: StartGateway,
    session: aiohttp.ClientSession,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    env = {"WSQ_JWT_SECRET": JWT_SECRET, "WSQ_MAX_CONNECTIONS_PER_USER": str(LIMIT)}
    first, second = start_gateway(**env), start_gateway(**env)

    # On one gateway the user's upgrades are checked one at a time: the limit answers 429.
    urls = [first.ws_url] * BURST
    ann: list[str | None] = ["ann"] * BURST
    outcomes = await burst(session, urls, ann)
    assert len(sockets(outcomes)) == LIMIT
    assert refusals(outcomes) == {("http", 429): BURST - LIMIT}
    await close_all(outcomes)
    await opens_exactly(session, urls, ann, LIMIT)

    # Spread over two gateways, some checks may pass together: registration, atomic in Redis,
    # refuses the extra ones with 1008. Never more than the limit open.
    urls = [first.ws_url, second.ws_url] * (BURST // 2)
    bob: list[str | None] = ["bob"] * BURST
    outcomes = await burst(session, urls, bob)
    assert len(sockets(outcomes)) == LIMIT
    assert set(refusals(outcomes)) <= {("http", 429), ("close", 1008)}
    assert redis_client.scard(Keys(key_prefix).user_connections("bob")) == LIMIT
    await close_all(outcomes)
    wait_until(
        lambda: redis_client.scard(Keys(key_prefix).user_connections("bob")) == 0,
        timeout=10,
        message="bob's slots back",
    )
    await opens_exactly(session, urls, bob, LIMIT)
