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
from collections.abc import Iterable
from typing import Any, NamedTuple

from wsq_protocol.keys import Keys
from wsq_protocol.resources import read_text

__all__ = ["STALE", "Script", "connection_keys", "expand", "script"]

STALE = b"stale"
"""The first element of the reply of a script that found the caller's keys out of date
(``forget.lua``, ``reap.lua``): nothing was written, call again with what it found."""

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


def connection_keys(
    keys: Keys, connection_id: str, node: str, user_id: str | None, groups: Iterable[str]
) -> tuple[list[str], list[str]]:
    """The KEYS and ARGV of one connection, as ``lib/forget.lua`` reads them (``forget.lua``,
    ``reap.lua`` after its own two keys)."""
    groups = list(groups)
    script_keys = [
        keys.connection(connection_id),
        keys.connection_groups(connection_id),
        keys.node_connections(node),
        keys.inbound_stream,
    ]
    if user_id:
        script_keys.append(keys.user_connections(user_id))
    script_keys += [keys.group_connections(group) for group in groups]
    return script_keys, [connection_id, node, user_id or "", *groups]
