"""``$history``: the gateway reads a page of a group's history for a client, itself, as it
answers ``$ping`` (protocol/README.md, "Group history").

The frame's data was checked when it was decoded (``decode_client_frame``: ``invalid_data``
otherwise). Only a member of the group may read it: the gateway knows the groups of the
connections it holds (``conn.groups``); a guest socket (a session homed on another gateway)
asks Redis for the connection's set of groups. Each read runs in a task of its own, so the
socket's next frames are read meanwhile; a connection has at most ``MAX_IN_FLIGHT`` (8) reads
running, one more is answered ``$error overloaded``. Redis failing: ``$error unavailable``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from wsq_gateway.logs import CONNECTIONS, get_logger
from wsq_protocol.cluster import REDIS_FAILURES
from wsq_protocol.codes import ErrorCode
from wsq_protocol.frames import ClientFrame, encode_error_frame, history_frame
from wsq_protocol.history import MAX_IN_FLIGHT, READ_SCRIPT, HistoryRead, parse_request
from wsq_protocol.scripts import run

if TYPE_CHECKING:
    from wsq_gateway.connection import Connection
    from wsq_gateway.state import Gateway

__all__ = ["MAX_IN_FLIGHT", "NOT_MEMBER", "OVERLOADED", "UNAVAILABLE", "read_history"]

log = get_logger(CONNECTIONS)

OVERLOADED = (
    f"too many $history reads in flight on this connection (at most {MAX_IN_FLIGHT}): send it again later"
)
UNAVAILABLE = "the gateway cannot reach Redis: the history was not read, send it again later"
NOT_MEMBER = "only a member of the group may read its history"

# The reads running, kept so they are not garbage-collected before they end.
_READS: set[asyncio.Task[None]] = set()


def read_history(gateway: Gateway, conn: Connection, frame: ClientFrame) -> ErrorCode | None:
    """Start answering the ``$history`` ``frame`` of ``conn``; the error code it was answered
    with at once (``not_member``, ``overloaded``), or None when the read started."""
    group, since, limit = parse_request(frame.data)
    max_pending = gateway.settings.max_pending_bytes
    guest = conn.home is not None
    if not guest and group not in (conn.groups or ()):
        conn.deliver(encode_error_frame(ErrorCode.NOT_MEMBER, NOT_MEMBER, frame.id), max_pending)
        return ErrorCode.NOT_MEMBER
    if conn.history_reads >= MAX_IN_FLIGHT:
        conn.deliver(encode_error_frame(ErrorCode.OVERLOADED, OVERLOADED, frame.id), max_pending)
        return ErrorCode.OVERLOADED
    conn.history_reads += 1
    read = HistoryRead.of(gateway.keys, group, since, limit)
    task = asyncio.create_task(_answer(gateway, conn, group, read, frame.id, check_member=guest))
    _READS.add(task)
    task.add_done_callback(_READS.discard)
    return None


async def _answer(
    gateway: Gateway,
    conn: Connection,
    group: str,
    read: HistoryRead,
    frame_id: str | None,
    *,
    check_member: bool,
) -> None:
    max_pending = gateway.settings.max_pending_bytes
    try:
        try:
            # A guest socket: its home holds the groups, Redis has them too.
            if check_member and not await gateway.redis.sismember(
                gateway.keys.connection_groups(conn.id), group
            ):
                conn.deliver(encode_error_frame(ErrorCode.NOT_MEMBER, NOT_MEMBER, frame_id), max_pending)
                return
            reply = await run(gateway.redis, READ_SCRIPT, read.keys, read.args)
            page = read.page(reply)
        except (*REDIS_FAILURES, TimeoutError) as exc:
            log.warning("could not read a group's history", connection_id=conn.id, error=str(exc))
            conn.deliver(encode_error_frame(ErrorCode.UNAVAILABLE, UNAVAILABLE, frame_id), max_pending)
            return
        except ValueError as exc:  # an entry not written by history_append.lua
            log.warning("a group's history holds a malformed entry", group=group, error=str(exc))
            conn.deliver(encode_error_frame(ErrorCode.UNAVAILABLE, UNAVAILABLE, frame_id), max_pending)
            return
        conn.deliver(history_frame(page.as_json(), frame_id), max_pending)
    finally:
        conn.history_reads -= 1
