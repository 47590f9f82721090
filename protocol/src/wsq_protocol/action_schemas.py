"""Per-action JSON Schemas, validated at the edge (protocol/README.md, "Action schemas").

A worker may declare, per action, a JSON Schema (draft-07, or 04/06) that the ``data`` of
the action's client frames must match. Workers publish them in the hash ``Keys.schemas``
(``{prefix}:schemas``): one field per action holding its schema as canonical JSON text
(:func:`schema_text`), and ``$version`` (:data:`VERSION_FIELD`, no action can be named so),
bumped by ``publish_schemas.lua`` whenever a field changes. Gateways poll ``$version`` and
read the hash again when it moved (:func:`published`); they compile and run the schemas.

This module holds what both sides agree on: the text of a schema, its digest, the script's
arguments. It does not validate data (the gateway does, with fastjsonschema).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from wsq_protocol.ids import is_action_name

VERSION_FIELD: Final = "$version"
"""The field of ``{prefix}:schemas`` counting its changes (a name no action can have)."""
DRAFTS: Final = frozenset(
    f"http://json-schema.org/draft-{draft}/schema{end}" for draft in ("04", "06", "07") for end in ("", "#")
)
"""The ``$schema`` values accepted; a schema without ``$schema`` is read as draft-07."""
MAX_SCHEMA_BYTES: Final = 65536
"""The largest schema, as canonical JSON text (UTF-8)."""
START: Final = "start"
RESTORE: Final = "restore"
"""``publish_schemas.lua``'s modes: a worker that starts writes its schemas (the last one to
start wins); a running one writes them back only when the hash is gone (Redis lost its data)."""


class SchemaError(ValueError):
    """A declared schema that cannot be published: the message says why."""


def schema_text(schema: object) -> str:
    """``schema`` (a JSON object) as canonical JSON text: sorted keys, no spaces, UTF-8 kept.

    SchemaError when it is not a JSON object, holds what JSON can't encode (a set, NaN...),
    names a draft other than 04, 06 or 07 in ``$schema``, has a ``$ref`` to anything but a
    part of itself (``#...``: a gateway never fetches a schema), or is over 64 KiB."""
    if not isinstance(schema, Mapping):
        raise SchemaError(f"a schema is a JSON object (a dict), not {type(schema).__name__}")
    try:
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"a schema must be JSON: {exc}") from None
    draft = schema.get("$schema")
    if draft is not None and draft not in DRAFTS:
        raise SchemaError(f"$schema must name draft-04, -06 or -07 (or be left out: draft-07), not {draft!r}")
    for ref in _refs(json.loads(text)):
        if not ref.startswith("#"):
            raise SchemaError(f"$ref may only point inside the schema ('#/...'), not {ref!r}")
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise SchemaError(f"a schema is at most {MAX_SCHEMA_BYTES} bytes of JSON")
    return text


def digest(text: str) -> str:
    """A schema's identity: the SHA-1 of its canonical text (what gateways cache compiled code by)."""
    return hashlib.sha1(text.encode()).hexdigest()


def publish_args(mode: str, schemas: Mapping[str, str], removed: Iterable[str] = ()) -> list[str]:
    """ARGV of ``publish_schemas.lua``: the mode, how many schemas, action and text pairs, then
    the actions whose schema to remove (handled by the worker, which declares none for them)."""
    if mode not in (START, RESTORE):
        raise ValueError(f"mode is {START!r} or {RESTORE!r}, not {mode!r}")
    args = [mode, str(len(schemas))]
    for action, text in schemas.items():
        args += [_checked_action(action), text]
    args += [_checked_action(action) for action in removed]
    return args


def published(fields: Mapping[Any, Any]) -> tuple[str | None, dict[str, str]]:
    """The ``$version`` and the schemas (action -> text) of an ``HGETALL {prefix}:schemas``
    (bytes or str, as the client decodes)."""
    version: str | None = None
    schemas: dict[str, str] = {}
    for raw_field, raw_value in fields.items():
        field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
        value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
        if field == VERSION_FIELD:
            version = value
        elif is_action_name(field):
            schemas[field] = value
    return version, schemas


def _checked_action(action: str) -> str:
    if not is_action_name(action):
        raise ValueError(f"action must be 1-64 letters, digits or _ . : -, not {action!r}")
    return action


def _refs(node: Any) -> Iterable[str]:
    """Every ``$ref`` string in a decoded schema (a property named ``$ref`` holds an object)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "$ref" and isinstance(value, str):
                    yield value
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
