"""The worker of the roundtrip workload: ``python -m wsq_worker bench.echo_worker:worker``.

``echo`` answers with the data it got, so a reply is the request's frame again, as the
bare aiohttp echo server and the Django Channels peer answer it. ``worker_with_schema``
(the ``wsq-schema`` system) also declares the schema of the load's chat frames, which the
gateway then checks each frame against (docs/benchmarks.md, "Edge validation").
"""

from __future__ import annotations

from typing import Any

from wsq_worker import Context, Worker


async def echo(ctx: Context, data: Any) -> Any:
    return data


ECHO_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 2000}},
    "required": ["text"],
    "additionalProperties": False,
}
"""What the load's frames carry (``loadgen.PAYLOAD``): a chat message."""

worker = Worker(actions={"echo": echo})
worker_with_schema = Worker(actions={"echo": echo}, schemas={"echo": ECHO_SCHEMA})
