"""JSON encoding for frames: orjson when it is installed (the gateway, ``wsq-worker[fast]``),
else the stdlib.

Both produce the same compact text (no spaces, UTF-8 characters unescaped), encode the same
types (orjson's extras, datetimes and dataclasses, are refused as the stdlib refuses them, and
what orjson can't encode but the stdlib can, such as integers beyond 64 bits or subclasses of
str, goes to the stdlib), refuse a str that is not UTF-8 (a lone surrogate, which JSON text can
hold but a frame can't) when encoding, and refuse NaN and Infinity when decoding, since they
are not JSON.
Differences left: orjson encodes UUIDs and writes NaN/Infinity as null (the stdlib raises
ValueError), and decodes integers beyond 64 bits as floats.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["BACKEND", "dumps", "dumps_utf8", "loads"]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _stdlib_dumps_utf8(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _stdlib_dumps(value: Any) -> str:
    return _stdlib_dumps_utf8(value).decode()


def _stdlib_loads(text: str | bytes) -> Any:
    return json.loads(text, parse_constant=_refuse_constant)


dumps_utf8: Callable[[Any], bytes]
"""Encode a value as compact JSON in UTF-8; TypeError or ValueError when it can't be encoded,
``UnicodeEncodeError`` for a str that is not UTF-8 (a lone surrogate), which no frame can carry."""
loads: Callable[[str | bytes], Any]
"""Decode JSON text; ValueError when it is not valid JSON."""

try:
    import orjson
except ImportError:  # pragma: no cover - depends on the installed extras
    BACKEND = "json"
    dumps_utf8, loads = _stdlib_dumps_utf8, _stdlib_loads
else:
    BACKEND = "orjson"

    _STDLIB_TYPES_ONLY = (
        orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
    )

    def _orjson_dumps_utf8(value: Any) -> bytes:
        try:
            return orjson.dumps(value, option=_STDLIB_TYPES_ONLY)
        except TypeError:  # raises again if the stdlib can't encode it either (or it isn't UTF-8)
            return _stdlib_dumps_utf8(value)

    dumps_utf8, loads = _orjson_dumps_utf8, orjson.loads


def dumps(value: Any) -> str:
    """``dumps_utf8()`` as text: compact JSON; the same errors."""
    return dumps_utf8(value).decode()
