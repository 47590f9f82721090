"""The chat example's worker with several processes (no browser: see test_chat_browser.py).

Kept apart from the browser tests: Playwright's sync API runs an event loop of its own,
which an async test in the same module could not share."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from system_harness import Client, StartGateway, StartWorker

ROOT = Path(__file__).resolve().parents[1]


async def test_the_chat_works_with_several_workers(
    start_gateway: StartGateway, start_worker: StartWorker
) -> None:
    """Every event may go to any worker: a name set through one is known to the others."""
    gateway = start_gateway()
    workers = [start_worker("examples.chat.worker:worker", cwd=ROOT) for _ in range(2)]
    async with aiohttp.ClientSession() as session:
        client = await Client.connect(session, gateway.ws_url)
        assert (await client.request("set_name", {"name": "Ada"}, id="n"))["data"] == {
            "ok": True,
            "name": "Ada",
        }
        for n in range(10):
            reply = await client.request("say", {"text": f"hello {n}"}, id=f"s{n}")
            assert reply["data"] == {"ok": True}, reply
    assert all(worker.running() for worker in workers)
