"""Types for what the tests hand to redis-py and get back, where its annotations are too loose
for ``mypy --strict``: ``xadd()``'s field map (an invariant ``dict``), a stream range read
without ``decode_responses`` and ``execute_command()`` (unannotated)."""

from __future__ import annotations

from typing import Any, Protocol, cast

import redis.asyncio
from redis.typing import EncodableT, FieldT, StreamRangeResponse

XaddFields = dict[FieldT, EncodableT]
"""A stream entry's fields as ``xadd()`` and ``hset(mapping=)`` take them (a dict is invariant:
no ``dict[str, str]``)."""


def xadd_fields(fields: dict[str, str]) -> XaddFields:
    """``fields``, typed as ``xadd()`` takes them."""
    return cast(XaddFields, fields)


BytesEntry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry read by a client without ``decode_responses``: its id and its fields."""


def bytes_entries(reply: StreamRangeResponse | None) -> list[BytesEntry]:
    """An XRANGE/XREVRANGE reply of a client without ``decode_responses``."""
    return cast("list[BytesEntry]", reply)


class _ExecutesCommands(Protocol):
    async def execute_command(self, *args: EncodableT) -> Any: ...


async def execute_command(client: redis.asyncio.Redis, *args: EncodableT) -> Any:
    """``client.execute_command(*args)``, which redis-py leaves unannotated (an untyped call);
    its reply is whatever the command answers."""
    return await cast(_ExecutesCommands, client).execute_command(*args)
