"""The wire contract in ``protocol/``, loaded for tests: schemas, golden examples, key names."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

PROTOCOL_DIR = Path(__file__).resolve().parents[3] / "protocol"
SCHEMAS = ("client-frame", "server-frame", "event", "command")
# The JSON text inside an event's or a command's "frame" field follows this schema.
FRAME_SCHEMA = {"event": "client-frame", "command": "server-frame"}


@cache
def _registry() -> Registry[Any]:
    resources = []
    for name in SCHEMAS:
        schema = json.loads((PROTOCOL_DIR / "schemas" / f"{name}.schema.json").read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


@cache
def validator(schema: str) -> jsonschema.Draft202012Validator:
    path = PROTOCOL_DIR / "schemas" / f"{schema}.schema.json"
    return jsonschema.Draft202012Validator(json.loads(path.read_text()), registry=_registry())


def is_valid(schema: str, doc: Any) -> bool:
    """Valid against the schema, and for events and commands their ``frame`` too."""
    if not validator(schema).is_valid(doc):
        return False
    frame_schema = FRAME_SCHEMA.get(schema)
    if frame_schema is not None and "frame" in doc:
        try:
            frame = json.loads(doc["frame"])
        except ValueError:
            return False
        return bool(validator(frame_schema).is_valid(frame))
    return True


def examples(kind: str, schema: str) -> list[Path]:
    """Golden example files, ``kind`` being ``valid`` or ``invalid``."""
    return sorted((PROTOCOL_DIR / "examples" / kind / schema).iterdir())


def example_ids(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def key_templates() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PROTOCOL_DIR / "keys.json").read_text())
    return data
