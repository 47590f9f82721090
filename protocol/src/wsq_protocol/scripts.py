"""The Lua scripts of ``protocol/lua/``, loaded once, called by ``EVALSHA``.

Each script gets every key it touches through ``KEYS[]`` and never builds a key name from the
prefix (protocol/README.md, "Lua scripts"): other languages load the same files, and a Redis
Cluster can route each call to the slot of its keys.

Redis has no include: a script that uses a helper of ``protocol/lua/lib/`` says so in its
header, with a line ``-- include: lib/<name>.lua``, which the loader replaces by that file's
text (one level, no nesting). The script Redis runs, and its SHA1, are those of the result.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from redis.exceptions import NoScriptError, ResponseError

from wsq_protocol.ids import node_of
from wsq_protocol.keys import Keys
from wsq_protocol.resources import read_text

__all__ = ["Script", "connection_keys", "expand", "run", "run_many", "script"]

_INCLUDE = re.compile(r"^-- include: (lib/[A-Za-z0-9_]+\.lua)[ \t]*$", re.MULTILINE)


class Script(NamedTuple):
    """One Lua script: its name (``protocol/lua/<name>.lua``), source and SHA1."""

    name: str
    body: str
    sha: str

    @classmethod
    def of(cls, name: str, body: str) -> Script:
        return cls(name, body, hashlib.sha1(body.encode()).hexdigest())

    def call(self, keys: tuple[Any, ...] | list[Any], *args: Any) -> tuple[Any, ...]:
        """The ``EVALSHA`` command running this script with ``keys`` and ``args``."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def eval(self, keys: tuple[Any, ...] | list[Any], *args: Any) -> tuple[Any, ...]:
        """The ``EVAL`` command (the body itself: for a Redis that may not know the script)."""
        return ("EVAL", self.body, len(keys), *keys, *args)


def expand(source: str) -> str:
    """``source`` with each ``-- include: lib/<name>.lua`` line replaced by that helper's text."""
    return _INCLUDE.sub(lambda match: read_text("lua", *match.group(1).split("/")).rstrip("\n"), source)


@functools.cache
def script(name: str) -> Script:
    """The script ``protocol/lua/<name>.lua``, its includes expanded."""
    return Script.of(name, expand(read_text("lua", f"{name}.lua")))


def connection_keys(keys: Keys, connection_id: str) -> list[str]:
    """The KEYS of one connection, as ``lib/forget.lua`` reads them (``forget.lua``, ``reap.lua``
    after its own two keys): all in the shard of the connection's node."""
    node = node_of(connection_id)
    return [
        keys.connection(connection_id),
        keys.connection_groups(connection_id),
        keys.node_connections(node),
        keys.inbound_stream_of(node),
        keys.node_intents(node),
    ]


async def run(client: Any, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run ``script`` on ``client`` (redis-py's ``Redis`` or ``RedisCluster``, which routes it by
    its first key): ``EVALSHA``, then ``EVAL`` when the server does not know it (a Redis that
    restarted, a replica just promoted)."""
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(script.body, len(keys), *keys, *args)


async def run_many(client: Any, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]]) -> list[Any]:
    """Run many scripts in one pipeline (per Redis Cluster node, in parallel), each its own
    ``EVALSHA``, and ``EVAL`` again, one by one, the ones the server did not know (a blocking
    Redis Cluster pipeline takes no ``EVAL``: rare, after a restart or ``SCRIPT FLUSH``). A
    reply is the script's, or the ``ResponseError`` Redis answered."""
    if not calls:
        return []
    pipe = client.pipeline(transaction=False)
    for item, keys, args in calls:
        pipe.evalsha(item.sha, len(keys), *keys, *args)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    for n in missing:
        item, keys, args = calls[n]
        try:
            replies[n] = await client.eval(item.body, len(keys), *keys, *args)
        except ResponseError as exc:
            replies[n] = exc
    return replies
