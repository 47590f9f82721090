"""The chat example's worker with several processes (no browser: see test_chat_browser.py).

Kept apart from the browser tests: Playwright's sync API runs an event loop of its own,
which an async test in the same module could not share."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from system_harness import Client, ConnectClient, StartGateway, StartWorker

ROOT = Path(__file__).resolve().parents[1]


async def test_the_chat_works_with_several_workers(
    start_gateway: StartGateway, start_worker: StartWorker, connect_client: ConnectClient
) -> None:
    """Every event may go to any worker: a name set through one is known to the others."""
    gateway = start_gateway()
    workers = [start_worker("examples.chat.worker:worker", cwd=ROOT) for _ in range(2)]
    client = await connect_client(gateway.ws_url)
    assert await client.request("set_name", {"name": "Ada"}) == {"ok": True, "name": "Ada"}
    for n in range(10):
        assert await client.request("say", {"text": f"hello {n}"}) == {"ok": True}, n
    assert all(worker.running() for worker in workers)


async def test_replies_and_pushes_have_distinct_actions(
    start_gateway: StartGateway, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply carries its request's action and id; a push has no id and an action no request
    has (``say`` is answered as ``say``, the text it posts pushed as ``message``), so the page
    (static/chat.js) never takes its own reply for a chat message. On the raw helper: the
    frames themselves (actions and ids) are the subject."""
    gateway = start_gateway()
    start_worker("examples.chat.worker:worker", cwd=ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    chat = importlib.import_module("examples.chat.worker")
    requests = set(chat.worker.actions)
    assert requests == {"set_name", "say"}
    assert not chat.PUSHES & requests, "no push is named like a request"
    async with aiohttp.ClientSession() as session:
        client = await Client.connect(session, gateway.ws_url)
        frames: list[dict[str, Any]] = []

        async def answer(action: str, data: Any, frame_id: str) -> None:
            """Send; read every frame up to the answer (one at a time: handlers of one
            connection may run at once, and say needs the name set)."""
            await client.send(action, data, id=frame_id)
            while not frames or frames[-1].get("id") != frame_id:
                frames.append(await client.receive())

        await answer("set_name", {"name": "Ada"}, "n1")
        await answer("say", {"text": "hello"}, "s1")
        while not any(frame["action"] == "message" for frame in frames):  # the broadcast may come last
            frames.append(await client.receive())
    answers = {frame["id"]: frame for frame in frames if "id" in frame}
    assert answers["n1"] == {"action": "set_name", "data": {"ok": True, "name": "Ada"}, "id": "n1"}
    assert answers["s1"] == {"action": "say", "data": {"ok": True}, "id": "s1"}
    pushes = [frame for frame in frames if "id" not in frame]
    assert {frame["action"] for frame in pushes} <= chat.PUSHES
    [message] = [frame for frame in pushes if frame["action"] == "message"]
    assert (message["data"]["from"], message["data"]["text"]) == ("Ada", "hello")
    # the sender's connection: the page marks its own messages with it
    assert message["data"]["connection_id"] == client.connection_id
