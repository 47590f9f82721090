"""The wire contract in ``protocol/``, loaded for tests: schemas, golden examples, key names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

PROTOCOL_DIR = Path(__file__).resolve().parents[3] / "protocol"
SCHEMAS = ("client-frame", "server-frame", "event", "command", "history-request")


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


@cache
def _content_validators(schema: str) -> dict[str, jsonschema.Draft202012Validator]:
    """For each field holding JSON text (``contentSchema``), a validator of that text."""
    root = validator(schema).schema
    assert isinstance(root, Mapping)
    found = {}
    for name, field in root.get("properties", {}).items():
        if "contentSchema" in field:
            pointer = {"$ref": f"{root['$id']}#/properties/{name}/contentSchema"}
            found[name] = jsonschema.Draft202012Validator(pointer, registry=_registry())
    return found


def errors(schema: str, doc: Any) -> list[str]:
    """Why ``doc`` is not valid (empty when it is), including the JSON text inside its fields
    (an event's ``frame`` and ``request``, a command's ``frame``): JSON Schema only annotates
    ``contentSchema``, so it is checked here."""
    found = [error.message for error in validator(schema).iter_errors(doc)]
    if found or not isinstance(doc, dict):
        return found
    for name, content in _content_validators(schema).items():
        if name not in doc:
            continue
        try:
            value = json.loads(doc[name])
        except ValueError as exc:
            return [f"{name} is not JSON: {exc}"]
        found += [f"{name}: {error.message}" for error in content.iter_errors(value)]
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
