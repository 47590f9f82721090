"""Redis errors, each marked permanent (no retry will help) or transient: the cases every
start-up check (``wsq_protocol.preflight`` and the packages that wrap it) is tested on."""

from __future__ import annotations

from redis import exceptions as redis_errors

PERMANENT_OR_TRANSIENT: list[tuple[BaseException, bool]] = [
    (redis_errors.ConnectionError("Connection refused"), False),
    (redis_errors.TimeoutError("Timeout reading from socket"), False),
    (redis_errors.BusyLoadingError("Redis is loading the dataset in memory"), False),
    (redis_errors.MasterDownError("Link with MASTER is down"), False),
    (redis_errors.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), False),
    (redis_errors.ResponseError("BUSY Redis is busy running a script"), False),
    (OSError("Network is unreachable"), False),
    (redis_errors.AuthenticationError("invalid username-password pair"), True),
    (redis_errors.AuthenticationError("Authentication required."), True),
    (redis_errors.NoPermissionError("this user has no permissions to run the 'eval' command"), True),
    (redis_errors.ReadOnlyError("You can't write against a read only replica."), True),
    (redis_errors.NoScriptError("No matching script. Please use EVAL."), True),
    # A Redis Cluster: a client that does not follow redirects, slots not served, keys of
    # several slots in one command are for ever; a fail-over or a slot moving is for a moment.
    (redis_errors.MovedError("3999 127.0.0.1:6381"), True),
    (redis_errors.AskError("3999 127.0.0.1:6381"), True),
    (redis_errors.ClusterDownError("Hash slot not served"), True),
    (redis_errors.ClusterDownError("The cluster is down"), False),
    (redis_errors.TryAgainError("Multiple keys request during rehashing of slot"), False),
    (redis_errors.ClusterCrossSlotError("Keys in request don't hash to the same slot"), True),
    (redis_errors.ResponseError("Error running script: Script attempted to access a non local key"), True),
    (redis_errors.RedisClusterException("EVALSHA - all keys must map to the same key slot"), True),
    (
        redis_errors.RedisClusterException(
            "All slots are not covered after query all startup_nodes. 0 of 16384 covered..."
        ),
        True,
    ),
    (redis_errors.RedisClusterException("Cluster mode is not enabled on this node"), True),
    (redis_errors.RedisClusterUnreachableError("Redis Cluster cannot be connected."), False),
    (redis_errors.RedisClusterException("startup_nodes could not agree on a valid slots cache"), False),
    (redis_errors.ResponseError("unknown command 'XAUTOCLAIM', with args beginning with:"), True),
    (redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), True),
]
"""(error, permanent?) pairs, for ``pytest.mark.parametrize(("error", "permanent"), ...)``."""
