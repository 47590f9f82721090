"""Batches the worker's Redis writes: replies, pushes and acks, in one pipeline per event-loop tick.

Everything queued while the previous pipeline was in flight goes out in the next one, so a busy
worker makes one round trip for many events. A pipeline holds the pushes handlers await
(``send()``), then one ``EVALSHA`` of ``delivery.COMMIT_SCRIPT`` per shard for the entries of
that shard's inbound partition acknowledged since (``ack()``): it runs each entry's writes
(replies, dead letters, retries: all in the shard's slot) and acknowledges (one ``XACK`` and one
``XDEL`` for them all) only the entries whose writes Redis all took. An
entry with a refused write stays pending, and its owner hears of it (``on_refused``) to run it
again. A pipeline whose connection was lost after it was sent (Redis may have run it) is never
sent again whole: its entries are sent again with a check that they are still pending, so a
reply is written once; its pushes fail with ``PublishError``, as they may have been written.

On a Redis Cluster the batch is a ``RoutedPipe``'s: each push to the master of its stream's
slot, each shard's commit to the master of its partition's, all at once; a master lost midway
costs only its own commands (sent again, checked, as above), the others' are done.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

import redis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsq_protocol.batching import TickBatcher
from wsq_protocol.cluster import AsyncClient
from wsq_protocol.keys import Keys
from wsq_protocol.routing import RoutedPipe
from wsq_worker.delivery import COMMIT_SCRIPT, DelayedWrite
from wsq_worker.exceptions import PublishError
from wsq_worker.publisher import StreamWrite, publish_error
from wsq_worker.speedups import RedisPipe

__all__ = ["BestEffort", "CommitWrite", "Flusher", "FlusherWrite", "PackedWrite", "Refused"]

logger = logging.getLogger("wsq_worker.flusher")

SourceT = TypeVar("SourceT")


class PackedWrite(NamedTuple):
    """A write to ``key`` packed in RESP already, with its number of ``arguments``: an ``XADD``
    (the replies, from a ``CommandTemplate``), or any ``FlusherWrite`` once queued."""

    key: str
    command: bytes
    arguments: int


FlusherWrite = StreamWrite | PackedWrite | DelayedWrite


class BestEffort(NamedTuple):
    """A write of an entry that does not hold back its ack when Redis refuses it (logged): the
    client's ``handler_failed`` after the dead letter, which went to the same broken key."""

    write: FlusherWrite


CommitWrite = FlusherWrite | BestEffort

Refused = Callable[[int, str, SourceT | None, str], None]
"""``on_refused(shard, entry_id, source, error)``: Redis refused a write of the entry (or the
whole batch), which is left pending, unacknowledged; ``source`` is what ``ack()`` was given."""


_Commit = tuple[str, list[bytes], int, tuple[CommitWrite, ...], SourceT | None, tuple[str, ...], int]
"""An entry to acknowledge with its writes: (entry id, its part of ``COMMIT_SCRIPT``'s arguments
in RESP, how many arguments that is, the writes, the source, the keys the writes touch, its
shard). A tuple: one per event, and a named tuple takes ten times as long to make."""


class Flusher(Generic[SourceT]):
    """Queues pushes and acks of inbound entries with their writes, and writes them in batches
    (a ``TickBatcher`` whose flush policy this is).

    Acks (``ack()``) are kept and sent again while Redis is unavailable; ``send()`` waits for
    its own write and raises ``PublishError`` instead.
    """

    def __init__(
        self,
        client: AsyncClient,
        keys: Keys,
        group: str,
        on_refused: Refused[SourceT] | None = None,
    ) -> None:
        # A batch lost midway is sent again here (never by the pipe).
        self._pipe: RedisPipe | RoutedPipe
        if isinstance(client, redis.asyncio.Redis):
            self._pipe = RedisPipe(client, resend=False)
        else:  # a cluster: each command to its key's master
            self._pipe = RoutedPipe(client, resend=False)
        self._keys = keys
        self._group = group
        self._on_refused = on_refused
        self._sends: list[tuple[PackedWrite, asyncio.Future[None]]] = []
        self._commits: list[_Commit[SourceT]] = []
        self._writing: list[_Commit[SourceT]] = []
        self._again = False
        """The last batch was lost after it was sent: check that entries are still pending."""
        self._batcher = TickBatcher(self, name="wsq-flusher", on_stop=self._stopped)
        script = COMMIT_SCRIPT.encode()
        self._by_sha = _bulk(b"EVALSHA") + _bulk(hashlib.sha1(script).hexdigest().encode())
        self._by_body = _bulk(b"EVAL") + _bulk(script)
        self._group_arg = _bulk(group.encode())

    def start(self) -> asyncio.Task[None]:
        return self._batcher.start()

    async def send(self, write: StreamWrite | PackedWrite) -> None:
        """Write in the next batch and wait for it; ``PublishError`` if Redis can't take it."""
        if self._batcher.closing or not self._batcher.running:
            raise PublishError("the worker has stopped: nothing was sent")
        packed = self._packed(write)
        done = asyncio.get_running_loop().create_future()
        self._sends.append((packed, done))
        self._batcher.wake()
        await done

    def ack(
        self, shard: int, entry_id: str, writes: tuple[CommitWrite, ...] = (), source: SourceT | None = None
    ) -> None:
        """Write ``writes`` in order, then ``XACK`` and ``XDEL`` the entry of the inbound
        partition of ``shard``, in the next batch; retried until Redis answers. The writes must
        be to keys of that shard (its slot), as the entry's are. If Redis refuses a write (not a
        ``BestEffort`` one), the entry's later writes are not sent, it is not acknowledged, and
        ``on_refused`` is called with ``source``. A write no Redis command can carry (a str that is not UTF-8)
        raises here, in the caller, not in the batch."""
        entry = entry_id.encode()
        write_count = len(writes)
        args = [
            b"$%d\r\n%s\r\n" % (len(entry), entry),
            _COUNTS[write_count] if write_count < len(_COUNTS) else _bulk(b"%d" % write_count),
        ]
        count = 2
        keys: list[str] = []
        for write in writes:
            if type(write) is not PackedWrite and isinstance(write, BestEffort):
                packed = self._packed(write.write)
                command = packed.command
                args.append(_bulk(b"-%d" % packed.arguments))
                args.append(command[command.index(b"\r\n") + 2 :])  # without its "*<count>" header
            else:
                packed = write if type(write) is PackedWrite else self._packed(write)
                # The command as it is: its "*<count>" header is read as one more argument.
                arguments = packed.arguments
                args.append(_HEADERS[arguments] if arguments < len(_HEADERS) else _header(arguments))
                args.append(packed.command)
            count += 1 + packed.arguments
            keys.append(packed.key)
        self._commits.append((entry_id, args, count, writes, source, tuple(keys), shard))
        self._batcher.wake()

    def _packed(self, write: FlusherWrite) -> PackedWrite:
        # Packed as it is queued: an argument that can't be packed would otherwise fail the
        # whole batch, and then every retry of it, for good.
        if isinstance(write, PackedWrite):
            return write
        if isinstance(write, DelayedWrite):  # rare: a retry
            delayed = ("WSQ.DELAYED", write.key, write.delay_ms, write.member)
            return PackedWrite(write.key, self._pipe.pack(delayed), len(delayed))
        command = write.command
        return PackedWrite(write.stream, self._pipe.pack(command), len(command))

    @property
    def backlog(self) -> int:
        return len(self._sends) + len(self._commits)

    @property
    def pending_acks(self) -> list[tuple[int, str]]:
        """The entries (shard, entry id) acknowledged here but not yet in Redis (queued, or being
        written)."""
        return [(commit[6], commit[0]) for commit in (*self._writing, *self._commits)]

    async def close(self, timeout: float) -> None:
        """Flush what is queued, for up to ``timeout`` seconds, then stop."""
        if not await self._batcher.close(timeout):
            logger.error(
                "gave up writing to Redis at shutdown: %d pushes and %d acks (with their replies) "
                "were not written; those entries stay pending, and run again on another worker",
                len(self._sends),
                len(self._commits),
            )

    async def _stopped(self) -> None:
        """Stopped (or gave up at shutdown): nobody may wait forever for a write."""
        for _, done in self._sends:
            if not done.done():
                done.set_exception(PublishError("the worker stopped before the push was written"))
        await self._pipe.aclose()

    # The flush policy (wsq_protocol.batching.FlushPolicy).

    def has_work(self) -> bool:
        return bool(self._sends or self._commits)

    async def flush(self) -> bool:
        sends, self._sends = self._sends, []
        commits, self._commits = self._commits, []
        self._writing = commits
        sent = False
        try:
            if isinstance(self._pipe, RedisPipe):
                await self._pipe.connect()  # failing here, nothing was sent
            sent = True
            return await self._write(sends, commits)
        except Exception as exc:  # Redis unreachable (or a bug): the flusher must go on
            if sent:  # Redis may have run it: the entries are sent again, checked
                self._again = True
            self._requeue(sends, commits, exc, sent=sent)
            if isinstance(exc, redis.RedisError):
                logger.error("Redis is unavailable (%s): retrying %d writes", exc, self.backlog)
            else:
                logger.exception("writing to Redis failed: retrying %d writes", self.backlog)
            return False  # the batch waits for Redis either way: a retry delay
        except BaseException:
            self._sends[:0] = sends
            self._commits[:0] = commits
            raise
        finally:
            self._writing = []

    async def _execute(self, commands: list[tuple[str, bytes]]) -> list[Any]:
        """The replies to ``(key, command)``s: on a single Redis, raises when the connection is
        lost; on a cluster, that error is in the place of each command of the lost master."""
        if isinstance(self._pipe, RoutedPipe):
            return await self._pipe.execute(commands)
        return await self._pipe.execute([command for _, command in commands])

    async def _write(
        self, sends: list[tuple[PackedWrite, asyncio.Future[None]]], commits: list[_Commit[SourceT]]
    ) -> bool:
        """Write the batch; False when some of it (a cluster master's part) must be sent again."""
        commands = [(write.key, write.command) for write, _ in sends]
        again = self._again
        by_shard: dict[int, list[_Commit[SourceT]]] = {}
        for commit in commits:  # in order within each shard
            by_shard.setdefault(commit[6], []).append(commit)
        for shard, shard_commits in by_shard.items():
            commands.append(
                (
                    self._keys.inbound_stream(shard),
                    self._commit_command(self._by_sha, shard, shard_commits, again),
                )
            )
        results = await self._execute(commands)
        for (write, done), result in zip(sends, results, strict=False):
            if isinstance(result, _LOST):  # a cluster master lost once it was sent: in doubt
                logger.error("the connection to Redis was lost writing to %s: %s", write.key, result)
                if not done.done():
                    error = publish_error(result, sent=True)
                    error.__cause__ = result
                    done.set_exception(error)
            elif isinstance(result, Exception):
                # Redis refused this one command (wrong key type, out of memory...): not retried.
                logger.error("Redis refused a write to %s: %s", write.key, result)
                if not done.done():
                    done.set_exception(
                        publish_error(result) if isinstance(result, redis.RedisError) else result
                    )
            elif not done.done():
                done.set_result(None)
        if not commits:
            return True
        commit_results = results[len(sends) :]
        unknown = [n for n, result in enumerate(commit_results) if isinstance(result, NoScriptError)]
        shards = list(by_shard)
        if unknown:
            # Redis restarted or flushed its scripts: nothing ran, send the script itself.
            bodies = [
                (
                    self._keys.inbound_stream(shards[n]),
                    self._commit_command(self._by_body, shards[n], by_shard[shards[n]], again),
                )
                for n in unknown
            ]
            for n, result in zip(unknown, await self._execute(bodies), strict=True):
                commit_results[n] = result
        # The entries of a lost batch are written or found done by now, but for those of a
        # cluster master lost midway: sent again (first), checked.
        lost = [n for n, result in enumerate(commit_results) if isinstance(result, _LOST)]
        self._again = bool(lost)
        if lost:
            logger.error(
                "Redis is unavailable (%s): retrying the acks of %d shards",
                commit_results[lost[0]],
                len(lost),
            )
            self._commits[:0] = [commit for n in lost for commit in by_shard[shards[n]]]
        for shard_commits, result in zip(by_shard.values(), commit_results, strict=True):
            if not isinstance(result, _LOST):
                self._committed(shard_commits, result)
        return not lost

    def _committed(self, commits: list[_Commit[SourceT]], result: Any) -> None:
        """Handle the reply of ``COMMIT_SCRIPT`` for ``commits`` (all of one shard)."""
        if isinstance(result, Exception):  # the script did not run: every entry is refused
            logger.error("Redis refused to acknowledge %d inbound entries: %s", len(commits), result)
            for commit in commits:
                self._refused(commit, str(result))
            return
        refused, skipped, ack_error = result
        if skipped:
            logger.info(
                "%d inbound entries were no longer pending when their batch was sent again "
                "(the first one ran): their writes were not written twice",
                skipped,
            )
        if ack_error:
            logger.error("Redis refused to acknowledge inbound entries: %s", _text(ack_error))
        for index in range(0, len(refused), 3):
            commit = commits[int(refused[index]) - 1]
            entry_id, writes = commit[0], commit[3]
            refused_write = writes[int(refused[index + 1]) - 1]
            error = _text(refused[index + 2])
            if isinstance(refused_write, BestEffort):
                logger.error(
                    "Redis refused a write to %s (entry %s, which went on without it): %s",
                    _key(refused_write.write),
                    entry_id,
                    error,
                )
            else:
                logger.error(
                    "Redis refused a write to %s: %s; entry %s is not acknowledged",
                    _key(refused_write),
                    error,
                    entry_id,
                )
                self._refused(commit, error)

    def _commit_command(self, head: bytes, shard: int, commits: list[_Commit[SourceT]], again: bool) -> bytes:
        """``EVALSHA`` (or ``EVAL``) of ``COMMIT_SCRIPT`` for ``commits``, all of ``shard``,
        packed: KEYS are the shard's inbound partition and every key the writes touch, once each."""
        inbound = self._keys.inbound_stream(shard)
        touched = dict.fromkeys(key for commit in commits for key in commit[5])
        touched.pop(inbound, None)
        keys = [_bulk(key.encode()) for key in touched]
        count = 6 + len(keys)  # EVALSHA, sha, numkeys, inbound, the keys, group, again
        parts = [b"", head, _bulk(b"%d" % (1 + len(keys))), _bulk(inbound.encode()), *keys, self._group_arg]
        parts.append(_AGAIN if again else _FIRST_TIME)
        for commit in commits:
            count += commit[2]
            parts += commit[1]
        parts[0] = b"*%d\r\n" % count
        return b"".join(parts)

    def _refused(self, commit: _Commit[SourceT], error: str) -> None:
        entry_id, source, shard = commit[0], commit[4], commit[6]
        if self._on_refused is None:
            logger.error(
                "inbound entry %s stays pending: it runs again once idle (claimed as when its worker dies)",
                entry_id,
            )
            return
        try:
            self._on_refused(shard, entry_id, source, error)
        except Exception:  # a bug there must not stop the flusher
            logger.exception("handling the refused writes of inbound entry %s failed", entry_id)

    def _requeue(
        self,
        sends: list[tuple[PackedWrite, asyncio.Future[None]]],
        commits: list[_Commit[SourceT]],
        exc: Exception,
        *,
        sent: bool,
    ) -> None:
        """Put the acks back in front of the queue; fail the pushes someone waits for."""
        self._writing = []
        for _, done in sends:
            if done.done():
                continue
            if not isinstance(exc, redis.RedisError):
                error = PublishError(f"writing to Redis failed: {exc!r}")
            else:  # nothing was sent, or (sent) it may or may not have been written
                error = publish_error(exc, sent=sent)  # one exception object per waiter
            error.__cause__ = exc
            done.set_exception(error)
        self._commits[:0] = commits


_LOST = (RedisConnectionError, RedisTimeoutError)
"""A command's error in its place on a cluster: its master was lost (or did not answer) once it
was sent, or could not be reached (``ClusterUnavailable``): it may or may not have run."""


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _header(arguments: int) -> bytes:
    """What makes the "*<arguments>" header of a packed command one more bulk string."""
    return b"$%d\r\n" % len(b"*%d" % arguments)


_FIRST_TIME = _bulk(b"0")
_AGAIN = _bulk(b"1")
_COUNTS = tuple(_bulk(b"%d" % count) for count in range(8))
_HEADERS = tuple(_header(arguments) for arguments in range(64))


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _key(write: FlusherWrite) -> str:
    return write.stream if isinstance(write, StreamWrite) else write.key
