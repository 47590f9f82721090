"""Workers declaring action schemas, for the edge-validation test (``python -m wsq_worker
schema_app:worker_v1``): ``chat.send`` has a schema (v2 tightens it), ``free`` has none.

Each handler notes the frame's data (JSON) in the list ``{prefix}:test:processed`` first, so
the test can tell which frames reached a worker. ``concurrency=1``: frames run in the order queued.
"""

from __future__ import annotations

import json
from typing import Any

from sample_app import PREFIX, recorder

from wsq_worker import Context, Worker


async def handle(ctx: Context, data: Any) -> Any:
    await recorder().rpush(f"{PREFIX}:test:processed", json.dumps(data))
    return data


def chat_send(max_length: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"text": {"type": "string", "maxLength": max_length}},
        "required": ["text"],
        "additionalProperties": False,
    }


ACTIONS = {"chat.send": handle, "free": handle}
worker_v1 = Worker(actions=ACTIONS, schemas={"chat.send": chat_send(100)}, concurrency=1)
worker_v2 = Worker(actions=ACTIONS, schemas={"chat.send": chat_send(3)}, concurrency=1)
