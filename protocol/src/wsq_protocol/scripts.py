"""The Lua scripts of ``protocol/lua/``, loaded once, called by ``EVALSHA``.

Each script gets every key it touches through ``KEYS[]`` and never builds a key name from the
prefix (protocol/README.md, "Lua scripts"): other languages load the same files, and a Redis
Cluster can route each call to the slot of its keys.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, NamedTuple

from wsq_protocol.resources import read_text

__all__ = ["Script", "script"]


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

    def load(self) -> tuple[str, str, str]:
        """The ``SCRIPT LOAD`` command for this script."""
        return ("SCRIPT", "LOAD", self.body)


@functools.cache
def script(name: str) -> Script:
    """The script ``protocol/lua/<name>.lua``."""
    return Script.of(name, read_text("lua", f"{name}.lua"))
