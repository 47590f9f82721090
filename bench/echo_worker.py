"""The worker of the roundtrip workload: ``python -m wsq_worker bench.echo_worker:worker``.

``echo`` answers with the data it got, so a reply is the request's frame again, as the
bare aiohttp echo server and the Django Channels peer answer it.
"""

from __future__ import annotations

from typing import Any

from wsq_worker import Context, Worker


async def echo(ctx: Context, data: Any) -> Any:
    return data


worker = Worker(actions={"echo": echo})
