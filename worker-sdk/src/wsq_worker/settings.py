"""The SDK's settings: ``WorkerSettings``, read from ``WSQ_*`` environment variables.

Each field is documented where it is defined: its variable, default and meaning (in the
field's metadata, which ``describe_settings()`` lists for ``wsq-worker --help``; the README's
table is checked against it). An unset or empty variable means the default. ``Worker(...)``
keyword arguments and ``wsq-worker`` options override the environment, so the ranges of the
numbers are checked when a worker starts, after those overrides.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Self

from wsq_protocol.cluster import check_redis_url
from wsq_protocol.keys import DEFAULT_SHARDS, MAX_SHARDS, check_shards, shards_from_env
from wsq_worker.exceptions import SettingsError

__all__ = ["ConnectionSettings", "WorkerSettings", "connection_from_env", "describe_settings", "variable_of"]


def _setting(variable: str, description: str) -> dict[str, str]:
    return {"variable": variable, "description": description}


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Every setting the SDK reads from its environment (``from_env()``)."""

    redis_url: str = field(
        default="redis://localhost:6379/0",
        metadata=_setting(
            "WSQ_REDIS_URL",
            "Redis to use (redis://, rediss:// for TLS, unix:// for a socket, with user:password@ for AUTH).",
        ),
    )
    redis_cluster: bool = field(
        default=False,
        metadata=_setting(
            "WSQ_REDIS_CLUSTER",
            "WSQ_REDIS_URL names a node of a Redis Cluster (or Valkey cluster): the worker finds the "
            "other masters from it, reads each shard's partition from its master and follows slot "
            "moves and failovers (1/true/yes/on; docs/deploy.md, 'Redis Cluster').",
        ),
    )
    key_prefix: str = field(
        default="wsq",
        metadata=_setting("WSQ_KEY_PREFIX", "Namespace of every Redis key: the gateways' WSQ_KEY_PREFIX."),
    )
    shards: int = field(
        default=DEFAULT_SHARDS,
        metadata=_setting(
            "WSQ_SHARDS",
            f"Number of shards of the Redis keys (1-{MAX_SHARDS}): the gateways' WSQ_SHARDS, the same on "
            "every gateway, worker and publisher of a deployment (checked at start).",
        ),
    )
    claim_idle_ms: int = field(
        default=15_000,
        metadata=_setting(
            "WSQ_CLAIM_IDLE_MS",
            "An inbound entry idle this long (ms) is taken over from a dead worker and run again "
            "(a live worker refreshes its entries every third of it). At least 1.",
        ),
    )
    max_attempts: int = field(
        default=3,
        metadata=_setting(
            "WSQ_MAX_ATTEMPTS",
            "Attempts of a message (1-9999) before it goes to the dead letters and its client "
            "gets $error handler_failed.",
        ),
    )
    # As Sidekiq's dead set (dead_max_jobs): a storm of failing messages can't fill Redis.
    max_dead_letters: int = field(
        default=10_000,
        metadata=_setting(
            "WSQ_MAX_DEAD_LETTERS",
            "Dead letters kept, the newest (a few more, as Redis trims in blocks); 0: keep all.",
        ),
    )
    metrics_port: int = field(
        default=0,
        metadata=_setting(
            "WSQ_METRICS_PORT",
            "Serve Prometheus metrics on this TCP port, at any path (0: none). Needs the metrics "
            "extra: pip install 'wsq-worker[metrics]'.",
        ),
    )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] = os.environ,
        *,
        redis_url: str | None = None,
        redis_cluster: bool | None = None,
        key_prefix: str | None = None,
        shards: int | None = None,
        claim_idle_ms: int | None = None,
        max_attempts: int | None = None,
        max_dead_letters: int | None = None,
        metrics_port: int | None = None,
    ) -> Self:
        """The settings ``environ`` gives; a value given here (not None) wins over its variable,
        which is then not read. ``SettingsError`` (a ValueError) naming the variable when a number
        is not a whole one, a boolean not a yes or no, or the Redis URL not a redis://, rediss://
        or unix:// one."""
        given: dict[str, object] = {
            "redis_url": redis_url,
            "redis_cluster": redis_cluster,
            "key_prefix": key_prefix,
            "shards": shards,
            "claim_idle_ms": claim_idle_ms,
            "max_attempts": max_attempts,
            "max_dead_letters": max_dead_letters,
            "metrics_port": metrics_port,
        }
        values: dict[str, Any] = {
            name: _read(environ, setting) if given[name] is None else given[name]
            for name, setting in _FIELDS.items()
        }
        values["redis_url"] = checked_redis_url(values["redis_url"], given=redis_url is not None)
        return cls(**values)


class ConnectionSettings(NamedTuple):
    """What a publisher needs: where Redis is (and whether it is a cluster), and the
    deployment's key names."""

    redis_url: str
    key_prefix: str
    shards: int
    redis_cluster: bool = False


def connection_from_env(
    environ: Mapping[str, str] = os.environ,
    *,
    redis_url: str | None = None,
    key_prefix: str | None = None,
    shards: int | None = None,
    redis_cluster: bool | None = None,
) -> ConnectionSettings:
    """``(redis_url, key_prefix, shards, redis_cluster)`` as ``WorkerSettings.from_env()`` reads
    them, and no other variable: all a publisher needs (a malformed worker setting is no concern
    of it). A value given here (not None, not empty) wins over its variable, which is then not
    read. ValueError naming ``WSQ_SHARDS`` when it is not a number from 1 to 1024, or
    ``WSQ_REDIS_CLUSTER`` when it is not a yes or no, or the Redis URL when it is not a
    redis://, rediss:// or unix:// one (``SettingsError``)."""
    return ConnectionSettings(
        checked_redis_url(redis_url or _read(environ, _FIELDS["redis_url"]), given=bool(redis_url)),
        key_prefix or _read(environ, _FIELDS["key_prefix"]),
        check_shards(shards) if shards is not None else shards_from_env(environ),
        redis_cluster if redis_cluster is not None else _read(environ, _FIELDS["redis_cluster"]),
    )


def describe_settings() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting, for --help and docs."""
    return [
        (setting.metadata["variable"], str(setting.default), setting.metadata["description"])
        for setting in _FIELDS.values()
    ]


def checked_redis_url(url: str, *, given: bool = True) -> str:
    """``url``, or ``SettingsError`` naming ``redis_url`` (``given``: an argument or an option)
    or ``WSQ_REDIS_URL`` (read from the environment) when redis-py can't use it."""
    try:
        return check_redis_url(url)
    except ValueError as exc:
        raise SettingsError(f"{'redis_url' if given else variable_of('redis_url')} {exc}") from None


def variable_of(name: str) -> str:
    """The environment variable of the setting ``name`` (a field of ``WorkerSettings``)."""
    return str(_FIELDS[name].metadata["variable"])


def _read(environ: Mapping[str, str], setting: dataclasses.Field[Any]) -> Any:
    variable = setting.metadata["variable"]
    text = environ.get(variable)
    if not text:
        return setting.default
    if isinstance(setting.default, bool):  # as pydantic reads the gateway's
        answer = _BOOLEANS.get(text.strip().lower())
        if answer is None:
            raise SettingsError(f"{variable} must be 1, true, yes or on (or 0, false, no, off), not {text!r}")
        return answer
    if not isinstance(setting.default, int):
        return text
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"{variable} must be a whole number, not {text!r}") from None


_BOOLEANS = {
    **dict.fromkeys(("1", "true", "t", "yes", "y", "on"), True),
    **dict.fromkeys(("0", "false", "f", "no", "n", "off"), False),
}
_FIELDS = {setting.name: setting for setting in dataclasses.fields(WorkerSettings)}
