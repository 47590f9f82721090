"""The JSON Schemas a worker declares for its actions (``Worker(schemas={...})``), checked when
the worker is made and published to Redis as it starts (protocol/README.md, "Action schemas").

A declaration is a JSON Schema (a dict, draft-07 unless its ``$schema`` names 04 or 06) or a
pydantic model class, turned into one by its ``model_json_schema()``: duck-typed, so the SDK
never imports pydantic. The gateways validate frames against them; the SDK only publishes
text, and compiles a schema here only to refuse a broken one early, when fastjsonschema
happens to be installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Mapping
from typing import Any

from wsq_protocol.action_schemas import SchemaError, schema_text
from wsq_worker.exceptions import SettingsError
from wsq_worker.protocol import is_action_name

__all__ = ["declared_schemas"]


def declared_schemas(
    schemas: Mapping[str, object], actions: Mapping[str, object], default: bool
) -> dict[str, str]:
    """action -> canonical schema text, for each declaration; SettingsError naming the action
    for a declaration that can't be published: an action the worker does not handle (no
    handler and no default), not a schema nor a model, not JSON, a draft or ``$ref`` the
    gateways don't take, or (fastjsonschema installed) a schema that does not compile."""
    texts: dict[str, str] = {}
    for action, declared in schemas.items():
        if not is_action_name(action):
            raise SettingsError(f"schemas: action must be 1-64 letters, digits or _ . : -, not {action!r}")
        if action not in actions and not default:
            raise SettingsError(f"schemas[{action!r}]: this worker has no handler for that action")
        try:
            text = schema_text(_as_schema(declared))
        except SchemaError as exc:
            raise SettingsError(f"schemas[{action!r}]: {exc}") from None
        _check_compiles(action, text)
        texts[action] = text
    return texts


def _as_schema(declared: object) -> object:
    """A dict as it is; a pydantic model (class) as its ``model_json_schema()``."""
    if isinstance(declared, Mapping):
        return declared
    to_schema = getattr(declared, "model_json_schema", None)
    if callable(to_schema):
        return to_schema()
    raise SchemaError(
        f"declare a JSON Schema (a dict) or a pydantic model class, not {type(declared).__name__}"
    )


def _check_compiles(action: str, text: str) -> None:
    if importlib.util.find_spec("fastjsonschema") is None:
        return  # optional: the gateways compile it anyway (and skip one that does not compile)
    fastjsonschema: Any = importlib.import_module("fastjsonschema")
    try:
        fastjsonschema.compile(json.loads(text), use_default=False)
    except Exception as exc:  # any failure of the compiler: JsonSchemaDefinitionException, re.error...
        raise SettingsError(f"schemas[{action!r}]: not a schema the gateways can compile: {exc}") from None
