"""Dispatch: one inbound entry in, the handler it names run, its writes out.

``Dispatcher.handle_entry()`` decodes an entry, runs its message handler or lifecycle hook
(``async def`` on the event loop, plain ``def`` in the thread pool), answers the gateway's
connect hook, and queues the entry's writes (its reply, error, retry or dead letter) with its
ack on the flusher. What becomes of a failed message is decided by ``retries``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from wsq_protocol.cluster import AsyncClient
from wsq_protocol.keys import Keys, keys_for
from wsq_protocol.pipe import CommandTemplate
from wsq_worker import constants, delivery, retries
from wsq_worker.context import Context
from wsq_worker.exceptions import ProtocolError, PublishError, Refuse, Retry
from wsq_worker.flusher import BestEffort, CommitWrite, Flusher, PackedWrite
from wsq_worker.protocol import (
    HANDLER_ERROR,
    HANDLER_FAILED,
    UNKNOWN_ACTION,
    Event,
    accept_command,
    checked_reply_frame,
    decode_event,
    error_frame,
    node_of,
    refuse_command,
    send_command,
    text_fields,
)
from wsq_worker.publisher import AsyncPublisher, StreamWrite

if TYPE_CHECKING:
    from wsq_worker.metrics import WorkerMetrics
    from wsq_worker.worker import LifecycleHandler, Worker

# The worker's logger, as before the worker was split into modules (logging set-ups name it).
logger = logging.getLogger("wsq_worker.worker")

# The connect hook's answers: on_connect returned False; on_connect failed (an exception, a
# return value that means nothing, or its attempts used up). 1011, the WebSocket code for a
# server error, is not a code a refuse command may carry (1000 or 3000-4999): 3011 is wsq's.
REFUSED = (4003, "refused")
HOOK_FAILED = (3011, "connect hook failed")
_MAX_REPLY_TEMPLATES = 1024
# An event's outcome, for the metrics (wsq_worker.metrics.OUTCOMES).
OK, ERROR, RETRY, DEAD_LETTERED, REFUSED_OUTCOME = "ok", "error", "retry", "dead_lettered", "refused"


def _label(event: Event) -> str:
    """An event's action label: its action, or $connect / $disconnect."""
    return event.action if event.action is not None else f"${event.type}"


def _run_again(writes: tuple[CommitWrite, ...]) -> tuple[tuple[CommitWrite, ...], str]:
    """The outcome of a message that runs again later, or was moved to the dead letters."""
    return writes, RETRY if writes and isinstance(writes[0], delivery.DelayedWrite) else DEAD_LETTERED


class Entry(NamedTuple):
    """An inbound entry being handled: its shard (the partition it came from), id, fields (as
    read), event and attempt."""

    shard: int
    entry_id: str
    raw_fields: Mapping[bytes, bytes]
    event: Event
    attempt: int


class Dispatcher:
    """Runs the worker's handlers for inbound entries, and queues their writes and acks.

    ``on_entry_done(shard, entry_id)`` is called once an entry's writes and ack are queued (or
    it failed): its slot is free again. An entry's writes go to its shard (its partition's
    slot): its reply to its connection's gateway, its retry to that shard's delayed set, its
    dead letter to that shard's dead letters.
    """

    def __init__(
        self,
        worker: Worker,
        client: AsyncClient,
        publisher: AsyncPublisher,
        on_entry_done: Callable[[int, str], None],
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.worker = worker
        self.metrics = metrics
        self.loop = asyncio.get_running_loop()
        self.publisher = publisher
        self.on_entry_done = on_entry_done
        self.keys = keys_for(worker.key_prefix, worker.shards)
        self.flusher: Flusher[Entry] = Flusher(
            client, self.keys, constants.CONSUMER_GROUP, on_refused=self.refused
        )
        self.executor = ThreadPoolExecutor(max_workers=worker.concurrency, thread_name_prefix="wsq-handler")
        self.reply_templates: dict[str, _ReplyTemplate] = {}
        """The packed head of a reply's ``XADD``, by gateway node."""

    async def handle_entry(
        self, shard: int, entry_id: str, raw_fields: Mapping[bytes, bytes] | None, delivered: int
    ) -> None:
        """Run the entry's handler (or dead-letter it), then acknowledge it with its writes,
        whatever happened: if Redis refuses one of them, ``refused()`` runs it again."""
        metrics = self.metrics
        started = time.perf_counter() if metrics is not None else 0.0
        try:
            entry = self._entry(shard, entry_id, raw_fields, delivered)
            writes: tuple[CommitWrite, ...] = ()
            outcome = OK
            try:
                if entry is not None:
                    past_attempts = retries.before_running(entry.attempt, self.worker.max_attempts, delivered)
                    if past_attempts is not None:
                        writes, outcome = self._give_up(entry, past_attempts), DEAD_LETTERED
                    elif entry.event.type == "message":
                        writes, outcome = await self._handle_message(entry)
                    else:
                        writes = await self._dispatch_lifecycle(entry)
            except Exception:
                outcome = ERROR
                logger.exception("failed to handle inbound entry %s", entry_id)
            if metrics is not None and entry is not None:
                seconds = time.perf_counter() - started if outcome != DEAD_LETTERED else None
                metrics.event(_label(entry.event), outcome, seconds)
            # The reply, dead letter or retry and the ack: one script, in the next pipeline.
            self.flusher.ack(shard, entry_id, writes, entry)
        finally:
            # Here rather than in a done callback: one loop callback less per event. (A task
            # cancelled before its first step never gets here: only a stopping worker does that.)
            self.on_entry_done(shard, entry_id)

    def refused(self, shard: int, entry_id: str, entry: Entry | None, error: str) -> None:
        """Redis refused a write of the entry (the flusher logged it), which is still pending:
        a message runs again as its next attempt, as after a crash; an event that can't carry
        an attempt (or whose retry or late dead letter was refused too) is left pending, and
        claimed once idle."""
        worker = self.worker
        if entry is not None and self.metrics is not None:
            self.metrics.event(_label(entry.event), REFUSED_OUTCOME, None)
        if entry is not None:
            is_message = entry.event.type == "message"
            decision = retries.after_refused_write(
                entry.attempt, worker.max_attempts, worker.claim_idle_ms, error, is_message=is_message
            )
            if not isinstance(decision, retries.LeavePending):
                # Not this entry again if these writes are refused too (source None): left pending.
                self.flusher.ack(shard, entry_id, self._after_failed_write(entry, decision), None)
                return
        logger.error(
            "inbound entry %s stays pending: it is claimed and runs again once idle for %d ms, "
            "as when its worker dies",
            entry_id,
            worker.claim_idle_ms,
        )

    def call(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        """What to await: an async function's own coroutine (no wrapper: one frame less per
        event), or a plain one run in the thread pool."""
        if _is_async_callable(fn):
            return fn(*args)  # type: ignore[no-any-return]
        return self._call_in_thread(fn, *args)

    async def _call_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        result = await self.loop.run_in_executor(self.executor, call)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            result = await result
        return result

    # Handling one event.

    @staticmethod
    def _entry(
        shard: int, entry_id: str, raw_fields: Mapping[bytes, bytes] | None, delivered: int
    ) -> Entry | None:
        """The entry to run; None for one deleted from the stream while pending, or malformed
        (logged). ``delivered`` is how often the consumer group handed the entry out (this time
        included)."""
        if raw_fields is None:
            return None
        try:
            event = decode_event(raw_fields)
        except ProtocolError as exc:
            logger.error("dropped inbound entry %s: %s", entry_id, exc)
            return None
        return Entry(shard, entry_id, raw_fields, event, retries.attempt_number(event.attempt, delivered))

    async def _dispatch_lifecycle(self, entry: Entry) -> tuple[CommitWrite, ...]:
        worker, event = self.worker, entry.event
        ctx = self._context(event, entry.attempt)
        if event.hook:
            return (await self._connect_hook(ctx),)
        if event.type == "connect":
            await self._run_hook(worker.on_connect, ctx, "on_connect")
        else:
            await self._run_hook(worker.on_disconnect, ctx, "on_disconnect")
        return ()

    async def _handle_message(self, entry: Entry) -> tuple[tuple[CommitWrite, ...], str]:
        """The message's writes: its reply (or error), or its retry or dead letter; and the
        outcome (metrics)."""
        event, worker = entry.event, self.worker
        assert event.action is not None
        handler = worker.actions.get(event.action, worker.default)
        if handler is None:
            message = f'no handler for action "{event.action}"'
            return (
                self._frame_write(event.connection_id, error_frame(UNKNOWN_ACTION, message, event.id)),
            ), ERROR
        try:
            result = await self.call(handler, self._context(event, entry.attempt), event.data)
        except Retry as retry:
            return _run_again(self._after_retry(entry, retry))
        except PublishError as exc:  # a write of the event was not taken: as a refused reply
            decision = retries.after_publish_error(
                entry.attempt, worker.max_attempts, worker.claim_idle_ms, exc
            )
            return _run_again(self._after_failed_write(entry, decision))
        except Exception:
            logger.exception(
                'handler of action "%s" failed (connection %s)', event.action, event.connection_id
            )
            return (
                self._frame_write(
                    event.connection_id, error_frame(HANDLER_ERROR, "the handler failed", event.id)
                ),
            ), ERROR
        if event.id is None:
            return (), OK
        try:
            frame = checked_reply_frame(event.action, result, event.id)
        except (TypeError, ValueError):
            logger.exception(
                'handler of action "%s" returned a value JSON can\'t encode (connection %s)',
                event.action,
                event.connection_id,
            )
            frame = error_frame(HANDLER_ERROR, "the handler failed", event.id).encode()
            return (self._connection_write(event.connection_id, frame),), ERROR
        return (self._connection_write(event.connection_id, frame),), OK

    async def _run_hook(self, hook: LifecycleHandler | None, ctx: Context, name: str) -> None:
        if hook is None:
            return
        try:
            await self.call(hook, ctx)
        except Refuse as refuse:
            logger.error(
                "on_connect raised Refuse(%s) for connection %s, but the gateway does not run the "
                "connect hook (WSQ_CONNECT_HOOK): the connection stays open",
                refuse,
                ctx.connection_id,
            )
        except Exception:
            logger.exception("%s failed (connection %s)", name, ctx.connection_id)

    async def _connect_hook(self, ctx: Context) -> StreamWrite:
        """Run ``on_connect`` for a connection the gateway holds; its answer: accept or refuse."""
        connection_id, on_connect = ctx.connection_id, self.worker.on_connect
        if on_connect is None:
            answer = accept_command(connection_id)
        else:
            try:
                result = await self.call(on_connect, ctx)
            except Refuse as refuse:
                logger.info("on_connect refused connection %s: %s", connection_id, refuse)
                answer = refuse_command(connection_id, refuse.code, refuse.reason)
            except Exception:
                logger.exception("on_connect failed (connection %s): refusing it", connection_id)
                answer = refuse_command(connection_id, *HOOK_FAILED)
            else:
                answer = hook_answer(connection_id, result)
        return self._command_write(connection_id, answer)

    # Executing the retry and dead-letter decisions.

    def _after_retry(self, entry: Entry, retry: Retry) -> tuple[CommitWrite, ...]:
        """The message in the delayed set as its next attempt, or its dead letter."""
        event, max_attempts = entry.event, self.worker.max_attempts
        decision = retries.after_retry(
            entry.attempt, max_attempts, retry.delay, retry.__cause__ or retry.__context__
        )
        if isinstance(decision, retries.GiveUp):
            return self._give_up(entry, decision)
        logger.info(
            'action "%s" (connection %s) asked for a retry: attempt %d of %d in %gs',
            event.action,
            event.connection_id,
            decision.attempt,
            max_attempts,
            retry.delay,
        )
        return (self._delayed_write(entry, decision),)

    def _after_failed_write(self, entry: Entry, decision: retries.Decision) -> tuple[CommitWrite, ...]:
        """A message a write of which failed: its next attempt, or its dead letter."""
        if isinstance(decision, retries.GiveUp):
            return self._give_up(entry, decision)
        event = entry.event
        logger.error(
            'action "%s" (connection %s, entry %s): %s; running it again as attempt %d in %d ms',
            event.action,
            event.connection_id,
            entry.entry_id,
            decision.reason,
            decision.attempt,
            decision.delay_ms,
        )
        return (self._delayed_write(entry, decision),)

    def _delayed_write(self, entry: Entry, run_again: retries.RunAgain) -> delivery.DelayedWrite:
        """The message's next attempt, in the delayed set of its shard."""
        if self.metrics is not None:
            self.metrics.retries.inc()
        member = delivery.delayed_member(entry.entry_id, text_fields(entry.raw_fields), run_again.attempt)
        return delivery.DelayedWrite(self.keys.delayed(entry.shard), member, run_again.delay_ms)

    def _give_up(self, entry: Entry, give_up: retries.GiveUp) -> tuple[CommitWrite, ...]:
        """The entry's dead letter (in its shard's), then (if Redis takes it) what tells the client
        (its gateway, for a hook)."""
        event, worker, attempts = entry.event, self.worker, give_up.attempts
        if self.metrics is not None:
            self.metrics.dead_letters.inc()
        dead = delivery.dead_letter(
            text_fields(entry.raw_fields), error=give_up.error, attempts=attempts, worker=worker.consumer_name
        )
        # MAXLEN ~: at least the newest max_dead_letters are kept (a few more, as Redis trims
        # whole nodes of its listpacks).
        cap = worker.max_dead_letters or None
        dead_letter = StreamWrite(self.keys.dead_letters(entry.shard), dead, cap)
        what = f'action "{event.action}"' if event.type == "message" else f"{event.type} event"
        logger.error(
            "%s (connection %s, entry %s) failed after %d attempts, moved to the dead letters: %s",
            what,
            event.connection_id,
            entry.entry_id,
            attempts,
            give_up.error,
        )
        # Best effort: it may go to the very key that refused the writes of the attempts.
        if event.type == "message":
            message = f"the message failed after {attempts} attempt{'' if attempts == 1 else 's'}"
            frame = self._frame_write(event.connection_id, error_frame(HANDLER_FAILED, message, event.id))
            return (dead_letter, BestEffort(frame))
        if event.hook:
            answer = self._command_write(
                event.connection_id, refuse_command(event.connection_id, *HOOK_FAILED)
            )
            return (dead_letter, BestEffort(answer))
        return (dead_letter,)

    # Writes to connections and gateways.

    def _context(self, event: Event, attempt: int) -> Context:
        connection_id = event.connection_id

        async def send_frame(frame: str) -> None:
            await self.flusher.send(self._connection_write(connection_id, frame.encode()))

        return Context._of_event(event, attempt, self.publisher, send_frame, self.loop)

    def _frame_write(self, connection_id: str, frame: str) -> PackedWrite:
        return self._connection_write(connection_id, frame.encode())

    def _connection_write(self, connection_id: str, frame: bytes) -> PackedWrite:
        """``Route.connection(keys, connection_id).send(frame)``, for an id already checked,
        packed from its node's template (built from ``send_command()`` the first time)."""
        node = connection_id.rpartition(".")[0]
        template = self.reply_templates.get(node)
        if template is None:
            if len(self.reply_templates) >= _MAX_REPLY_TEMPLATES:  # gateways come and go
                self.reply_templates.clear()
            template = self.reply_templates[node] = _reply_template(self.keys, node)
        command = template.command
        return PackedWrite(
            template.stream, command.pack(connection_id.encode(), b"frame", frame), command.arguments
        )

    def _command_write(self, connection_id: str, fields: dict[str, str]) -> StreamWrite:
        """A command for the gateway holding ``connection_id``."""
        return StreamWrite.to_node(self.keys, node_of(connection_id), fields)


def hook_answer(connection_id: str, result: object) -> dict[str, str]:
    """The command answering a connect hook whose ``on_connect`` returned ``result``."""
    if result is None or result is True:
        return accept_command(connection_id)
    if result is False:
        return refuse_command(connection_id, *REFUSED)
    if isinstance(result, str):
        with contextlib.suppress(ValueError):  # not a usable user id (protocol.check_user_id)
            return accept_command(connection_id, result)
    logger.error(
        "on_connect returned %r for connection %s: expected a user id (1-256 bytes of UTF-8 "
        "without control characters), None, True or False; refusing it",
        result,
        connection_id,
    )
    return refuse_command(connection_id, *HOOK_FAILED)


class _ReplyTemplate(NamedTuple):
    stream: str
    command: CommandTemplate


def _reply_template(keys: Keys, node: str) -> _ReplyTemplate:
    """The ``XADD`` of a ``send`` command to one connection of ``node``, packed up to its ``to``."""
    sample = f"{node}.{'x' * 22}"
    write = StreamWrite.to_node(keys, node, send_command("connection", sample, ""))
    stream, command = write.stream, write.command
    if command[-4:] != ("to", sample, "frame", ""):  # send_command's field order changed
        raise AssertionError(f"unexpected send command {command!r}")
    return _ReplyTemplate(stream, CommandTemplate(command[:-3], 3))


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    # An object with an ``async def __call__`` counts too. Asked for every event: cached.
    try:
        return _ASYNC_CALLABLES[fn]
    except (KeyError, TypeError):  # TypeError: not hashable, so not cached
        pass
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
    with contextlib.suppress(TypeError):
        _ASYNC_CALLABLES[fn] = is_async
    return is_async


_ASYNC_CALLABLES: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
