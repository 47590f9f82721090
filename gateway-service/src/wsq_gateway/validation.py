"""Edge validation: the ``data`` of a client frame against the JSON Schema its action's workers
declared (protocol/README.md, "Action schemas").

Workers publish their schemas in the hash ``{prefix}:schemas`` (action -> canonical schema
text, and a ``$version`` bumped by every change). :class:`Validators` reads it at start, then
polls ``$version`` every ``WSQ_SCHEMAS_REFRESH_S`` and reads the hash again when it moved.
Each schema is compiled once by fastjsonschema (Python code generated from the schema: ~µs per
frame) and kept by its digest, so a reload recompiles only what changed. A schema that does
not compile is logged once and not enforced: that action's frames pass, and /readyz and the
metric ``wsq_gateway_schemas_failed`` show it. Actions without a schema are not validated.

When the hash is gone (Redis lost its data), the gateway keeps the schemas it has until the
workers write them back (they check every few seconds).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import fastjsonschema

from wsq_gateway.logs import GATEWAY, get_logger
from wsq_protocol import action_schemas
from wsq_protocol.cluster import REDIS_FAILURES, AsyncClient

log = get_logger(GATEWAY)

Validate = Callable[[Any], Any]


class _NoRemote(dict[str, Callable[[str], Any]]):
    """fastjsonschema's ``handlers`` that answer every URI scheme by refusing: it would fetch a
    remote ``$ref`` with urllib otherwise. Workers refuse such refs already; this is the
    gateway's own guard."""

    def __contains__(self, scheme: object) -> bool:
        return True

    def __getitem__(self, scheme: str) -> Callable[[str], Any]:
        return _refuse_remote


def _refuse_remote(uri: str) -> Any:
    raise fastjsonschema.JsonSchemaDefinitionException(f"remote $ref {uri!r}: gateways never fetch schemas")


def compile_schema(text: str) -> Validate:
    """A schema's validator; raises whatever the compiler raised for one it can't compile."""
    validate: Validate = fastjsonschema.compile(json.loads(text), handlers=_NoRemote(), use_default=False)
    return validate


class Validators:
    """The compiled schemas of every action that has one, kept in step with Redis."""

    def __init__(self, redis: AsyncClient, key: str, refresh_s: float) -> None:
        self._redis = redis
        self._key = key
        self._refresh_s = refresh_s
        self.version: str | None = None
        """``$version`` of the hash as last read (None: never read, or never written)."""
        self.by_action: dict[str, Validate] = {}
        self.failed: dict[str, str] = {}
        """action -> why its schema did not compile (its frames pass unvalidated)."""
        self._compiled: dict[str, Validate | str] = {}  # digest -> validator, or the compile error

    def problem(self, action: str, data: Any) -> str | None:
        """None when ``data`` may be queued for ``action``, else the ``invalid_data`` message,
        naming the failing path (``data.text``, ``data.items[2]``)."""
        validate = self.by_action.get(action)
        if validate is None:
            return None
        try:
            validate(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            return f"data of action {action!r} does not match its schema: {exc.message}"
        except Exception as exc:  # a validator that breaks must not close the socket: the frame passes
            log.warning("a schema's validator failed: frame not validated", action=action, error=repr(exc))
        return None

    def load(self, version: str | None, schemas: Mapping[str, str]) -> None:
        """Use ``schemas`` (action -> text) from now on, compiling only the texts not seen yet."""
        by_action: dict[str, Validate] = {}
        failed: dict[str, str] = {}
        compiled: dict[str, Validate | str] = {}
        for action, text in schemas.items():
            key = action_schemas.digest(text)
            validator = compiled.get(key) or self._compiled.get(key) or self._compile(action, text)
            compiled[key] = validator
            if isinstance(validator, str):
                failed[action] = validator
            else:
                by_action[action] = validator
        self._compiled = compiled  # what no action uses any more is dropped
        self.by_action, self.failed, self.version = by_action, failed, version

    def _compile(self, action: str, text: str) -> Validate | str:
        try:
            return compile_schema(text)
        except Exception as exc:  # JsonSchemaDefinitionException, re.error in a pattern, RecursionError...
            error = f"{type(exc).__name__}: {exc}"
            log.error(
                "an action's schema does not compile: its frames pass unvalidated", action=action, error=error
            )
            return error

    async def refresh(self) -> bool:
        """Read the hash again if its ``$version`` moved; True when it did."""
        raw = await self._redis.hget(self._key, action_schemas.VERSION_FIELD)
        version = raw.decode() if isinstance(raw, bytes) else raw
        if version is None or version == self.version:
            return False  # unchanged, or gone: keep what we have until workers write it back
        version, schemas = action_schemas.published(await self._redis.hgetall(self._key))
        if version is None:  # deleted between the two reads
            return False
        self.load(version, schemas)
        log.info(
            "action schemas loaded", version=version, validated=len(self.by_action), failed=len(self.failed)
        )
        return True

    async def run(self) -> None:
        """Refresh every ``refresh_s`` for the gateway's life; Redis failures are retried."""
        while True:
            await asyncio.sleep(self._refresh_s)  # a period, not a synchronisation
            try:
                await self.refresh()
            except REDIS_FAILURES as exc:
                log.warning("could not read the action schemas", error=str(exc))

    def report(self) -> dict[str, object]:
        """For /readyz."""
        return {"version": self.version, "validated": sorted(self.by_action), "failed": dict(self.failed)}
