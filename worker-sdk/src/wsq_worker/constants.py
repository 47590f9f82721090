"""Environment variables, Redis key names and stream caps, as listed in protocol/keys.json."""

from __future__ import annotations

import os

REDIS_URL_ENV = "WSQ_REDIS_URL"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
KEY_PREFIX_ENV = "WSQ_KEY_PREFIX"
DEFAULT_KEY_PREFIX = "wsq"
CLAIM_IDLE_MS_ENV = "WSQ_CLAIM_IDLE_MS"
DEFAULT_CLAIM_IDLE_MS = 15_000
MAX_ATTEMPTS_ENV = "WSQ_MAX_ATTEMPTS"
DEFAULT_MAX_ATTEMPTS = 3
MAX_DEAD_LETTERS_ENV = "WSQ_MAX_DEAD_LETTERS"
# As Sidekiq's dead set (dead_max_jobs): a storm of failing messages can't fill Redis; the
# oldest dead letters go first. 0: no cap.
DEFAULT_MAX_DEAD_LETTERS = 10_000

CONSUMER_GROUP = "workers"

# Approximate caps (XADD ... MAXLEN ~ N): a gateway that vanished can't make Redis grow without bound.
NODE_STREAM_MAXLEN = 100_000
BROADCAST_STREAM_MAXLEN = 1_000


def redis_url_from_env() -> str:
    return os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL


def key_prefix_from_env() -> str:
    return os.environ.get(KEY_PREFIX_ENV) or DEFAULT_KEY_PREFIX


def claim_idle_ms_from_env() -> int:
    """``WSQ_CLAIM_IDLE_MS``, else 15000; ValueError when it is not a whole number."""
    return _int_from_env(CLAIM_IDLE_MS_ENV, DEFAULT_CLAIM_IDLE_MS)


def max_attempts_from_env() -> int:
    """``WSQ_MAX_ATTEMPTS``, else 3; ValueError when it is not a whole number."""
    return _int_from_env(MAX_ATTEMPTS_ENV, DEFAULT_MAX_ATTEMPTS)


def max_dead_letters_from_env() -> int:
    """``WSQ_MAX_DEAD_LETTERS``, else 10000 (0: no cap); ValueError when it is not a whole number."""
    return _int_from_env(MAX_DEAD_LETTERS_ENV, DEFAULT_MAX_DEAD_LETTERS)


def _int_from_env(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text!r}") from None


def inbound_stream(prefix: str) -> str:
    """Events from every gateway to the workers (consumer group ``workers``)."""
    return f"{prefix}:inbound"


def node_stream(prefix: str, node: str) -> str:
    """Commands for the connections held by the gateway ``node``."""
    return f"{prefix}:node:{node}:out"


def broadcast_stream(prefix: str) -> str:
    """Commands for every connection, read by every gateway."""
    return f"{prefix}:broadcast"


def connection(prefix: str, connection_id: str) -> str:
    """Hash describing one connection: ``node``, ``user_id``, ``since``, ``addr``."""
    return f"{prefix}:conn:{connection_id}"


def user_connections(prefix: str, user_id: str) -> str:
    """Set of the connection ids of one user, on every gateway."""
    return f"{prefix}:user:{user_id}:conns"


def node_connections(prefix: str, node: str) -> str:
    """Set of the connection ids one gateway holds."""
    return f"{prefix}:node:{node}:conns"


def group_connections(prefix: str, group: str) -> str:
    """Set of the connection ids of one group, on every gateway."""
    return f"{prefix}:group:{group}:conns"


def connection_groups(prefix: str, connection_id: str) -> str:
    """Set of the groups of one connection."""
    return f"{prefix}:conn:{connection_id}:groups"


def nodes(prefix: str) -> str:
    """Sorted set of the live gateways, scored by their last heartbeat (ms since the epoch)."""
    return f"{prefix}:nodes"


def node_reaped(prefix: str, node: str) -> str:
    """Set by a reaper that removed the connections of ``node`` (read by that gateway only)."""
    return f"{prefix}:node:{node}:reaped"


def node_sequence(prefix: str, node: str) -> str:
    """The sequence number of the last client frame ``node`` appended (read by that gateway only)."""
    return f"{prefix}:node:{node}:seq"


def dead_letters(prefix: str) -> str:
    """Stream of the events that used up their attempts, with their last error."""
    return f"{prefix}:dead"


def delayed(prefix: str) -> str:
    """Sorted set of the messages waiting for a retry (``Retry(delay=...)``), scored by due time (ms)."""
    return f"{prefix}:delayed"
