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


def errors(schema: str, doc: Any) -> list[str]:
    """Why ``doc`` is not valid (empty when it is); for events and commands, their ``frame`` too."""
    found = [error.message for error in validator(schema).iter_errors(doc)]
    frame_schema = FRAME_SCHEMA.get(schema)
    if not found and frame_schema is not None and isinstance(doc, dict) and "frame" in doc:
        try:
            frame = json.loads(doc["frame"])
        except ValueError as exc:
            return [f"frame is not JSON: {exc}"]
        found = [f"frame: {error.message}" for error in validator(frame_schema).iter_errors(frame)]
    return found


def is_valid(schema: str, doc: Any) -> bool:
    return not errors(schema, doc)


def examples(kind: str, schema: str) -> list[Path]:
    """Golden example files, ``kind`` being ``valid`` or ``invalid``."""
    return sorted((PROTOCOL_DIR / "examples" / kind / schema).iterdir())


def example_ids(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def key_templates() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PROTOCOL_DIR / "keys.json").read_text())
    return data
