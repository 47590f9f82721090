"""Typed views of redis-py replies, for the worker tests.

redis-py types a reply for any client: ``bytes | str`` (it cannot know ``decode_responses``), a
stream range as optional, XREADGROUP and ZRANGE as unions of every shape they can take. The
tests' ``redis_client`` decodes replies (``str``), a few other clients do not (``bytes``): these
give a reply the one type it has there, with a cast where redis-py returns it.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import redis.asyncio
from redis.typing import EncodableT, FieldT, StreamRangeResponse

XaddFields = dict[FieldT, EncodableT]
"""A stream entry's fields as ``xadd()`` and ``hset(mapping=)`` take them (a dict is invariant:
no ``dict[str, str]``)."""

StrEntry = tuple[str, dict[str, str]]
"""A stream entry read by a client with ``decode_responses=True``: its id and its fields."""

BytesEntry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry read by a client without ``decode_responses``."""


def xadd_fields(fields: dict[str, str]) -> XaddFields:
    """``fields``, typed as ``xadd()`` takes them."""
    return cast(XaddFields, fields)


def str_reply(reply: bytes | str) -> str:
    """A single reply of a client with ``decode_responses=True`` (an entry id, a member)."""
    return cast(str, reply)


def str_entries(reply: StreamRangeResponse | None) -> list[StrEntry]:
    """An XRANGE/XREVRANGE reply of a client with ``decode_responses=True``."""
    return cast("list[StrEntry]", reply)


def bytes_entries(reply: StreamRangeResponse | None) -> list[BytesEntry]:
    """An XRANGE/XREVRANGE reply of a client without ``decode_responses``."""
    return cast("list[BytesEntry]", reply)


class _ExecutesCommands(Protocol):
    async def execute_command(self, *args: EncodableT) -> Any: ...


async def execute_command(client: redis.asyncio.Redis, *args: EncodableT) -> Any:
    """``client.execute_command(*args)``, which redis-py leaves unannotated (an untyped call);
    its reply is whatever the command answers."""
    return await cast(_ExecutesCommands, client).execute_command(*args)
