"""The ``wsq-worker`` command (also ``python -m wsq_worker``): run a worker, manage dead letters
(``wsq-worker dead list|show|replay|purge``), show a deployment's state (``wsq-worker status``,
live: ``wsq-worker top``) or push a frame from the shell (``wsq-worker send``)."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from wsq_protocol.cluster import REDIS_ERRORS, SyncClient, sync_redis
from wsq_protocol.keys import CONSUMER_GROUP, MAX_SHARDS, Keys, keys_for
from wsq_worker import __version__
from wsq_worker.delivery import DEAD_LETTER_FIELDS, REPLAY_DROPS, REPLAY_SCRIPT
from wsq_worker.exceptions import PublishError, SettingsError, WorkerFailedError
from wsq_worker.logs import configure_logging
from wsq_worker.preflight import check_metrics_available
from wsq_worker.protocol import push_frame
from wsq_worker.publisher import Publisher
from wsq_worker.settings import ConnectionSettings, connection_from_env, describe_settings, variable_of
from wsq_worker.status import CONSUMER_LIVE_MS, NODE_TIMEOUT_MS, format_status, read_status
from wsq_worker.terminal import Progress, Screen
from wsq_worker.top import watch
from wsq_worker.worker import Worker

__all__ = [
    "build_dead_parser",
    "build_parser",
    "build_send_parser",
    "build_status_parser",
    "build_top_parser",
    "load_worker",
    "main",
]

_DESCRIPTION = """\
Run a wsq worker: handle the events the wsq gateways append to Redis.

TARGET is MODULE:ATTRIBUTE, like uvicorn's: the module is imported (the current directory
comes first on sys.path) and ATTRIBUTE is a wsq_worker.Worker, or a function taking no
arguments that returns one. The options below override the Worker's own settings.

`wsq-worker dead list|show|replay|purge` manages the dead letters (see `wsq-worker dead --help`),
`wsq-worker status` shows the gateways, workers and backlog (`wsq-worker top`: live, with rates),
`wsq-worker send` pushes a frame (see their --help).
"""


def _environment_help() -> str:
    """The settings the environment gives (``settings.describe_settings()``), for the epilog."""
    lines = ["environment (the options above, then the Worker's own arguments, override it):"]
    for variable, default, description in describe_settings():
        lines.append(f"  {variable}")
        lines += textwrap.wrap(
            f"{description} Default: {default}.", 88, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    return "\n".join(lines)


_EPILOG = f"""\
{_environment_help()}

SIGINT or SIGTERM stops reading events, lets in-flight handlers finish (up to the
Worker's shutdown_timeout), writes their replies and exits with status 0. A Redis the
worker can never use (a replica, a wrong password, a cluster node without --redis-cluster...)
or a background task that died stops it the same way, with one line on stderr and status 1.
A malformed or out-of-range setting (a WSQ_* variable that is not a number, a WSQ_REDIS_URL
that is not a redis://, rediss:// or unix:// URL) stops it at start with one line and status 2.

example:
  wsq-worker chat.app:worker --concurrency 50 --log-level debug
"""


_DEAD_DESCRIPTION = f"""\
List, show, replay or purge the dead letters: the events that used up their attempts (a handler that
raised Retry every time, or workers that died running it), kept with their last error in
the dead-letter stream of their shard, {{prefix:SHARD}}:dead. A dead letter is named
SHARD:ID, its shard and its id in that stream (3:1764316800123-0).

  wsq-worker dead list [--count N] [--json]
  wsq-worker dead show SHARD:ID
  wsq-worker dead replay SHARD:ID [SHARD:ID ...]
  wsq-worker dead replay --all
  wsq-worker dead purge SHARD:ID [SHARD:ID ...]
  wsq-worker dead purge --all --yes

replay puts each event back into its shard's inbound partition, {{prefix:SHARD}}:inbound,
as a new event (attempt 1) and removes it from the dead letters, atomically: each one is
replayed once, even when two replays run at the same time. purge deletes them for good.
Redis: --redis-url, --key-prefix,
--shards and --redis-cluster, else {variable_of("redis_url")}, {variable_of("key_prefix")},
{variable_of("shards")} and {variable_of("redis_cluster")}.
"""

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class TargetError(Exception):
    """TARGET can't be loaded: the message says why."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsq-worker",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="TARGET", help="MODULE:ATTRIBUTE of the Worker, e.g. app:worker")
    parser.add_argument(
        "--concurrency", type=_positive_int, metavar="N", help="events handled at once (and thread pool size)"
    )
    parser.add_argument(
        "--redis-url", metavar="URL", help=f"Redis URL (overrides {variable_of('redis_url')})"
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        default=None,
        help=f"the Redis URL names a node of a Redis Cluster (overrides {variable_of('redis_cluster')})",
    )
    parser.add_argument(
        "--key-prefix", metavar="PREFIX", help=f"Redis key prefix (overrides {variable_of('key_prefix')})"
    )
    parser.add_argument(
        "--shards",
        type=_shards,
        metavar="N",
        help=f"number of shards, the gateways' (overrides {variable_of('shards')})",
    )
    parser.add_argument(
        "--claim-idle-ms",
        type=_positive_int,
        metavar="MS",
        help=f"claim entries of dead workers idle this long (overrides {variable_of('claim_idle_ms')})",
    )
    parser.add_argument(
        "--max-attempts",
        type=_positive_int,
        metavar="N",
        help=f"attempts before a message goes to the dead letters (overrides {variable_of('max_attempts')})",
    )
    parser.add_argument(
        "--max-dead-letters",
        type=_non_negative_int,
        metavar="N",
        help=f"dead letters kept, the newest (0: all; overrides {variable_of('max_dead_letters')})",
    )
    parser.add_argument(
        "--metrics-port",
        type=_non_negative_int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (0: none; needs wsq-worker[metrics]; "
        f"overrides {variable_of('metrics_port')})",
    )
    parser.add_argument(
        "--log-level", choices=_LOG_LEVELS, default="info", help="logging level (default: info)"
    )
    parser.add_argument("--version", action="version", version=f"wsq-worker {__version__}")
    return parser


def _redis_options() -> argparse.ArgumentParser:
    """The Redis options of ``dead``, ``status`` and ``send`` (a parent parser)."""
    redis_options = argparse.ArgumentParser(add_help=False)
    redis_options.add_argument(
        "--redis-url", metavar="URL", help=f"Redis URL (overrides {variable_of('redis_url')})"
    )
    redis_options.add_argument(
        "--redis-cluster",
        action="store_true",
        default=None,
        help=f"the Redis URL names a node of a Redis Cluster (overrides {variable_of('redis_cluster')})",
    )
    redis_options.add_argument(
        "--key-prefix", metavar="PREFIX", help=f"Redis key prefix (overrides {variable_of('key_prefix')})"
    )
    redis_options.add_argument(
        "--shards", type=_shards, metavar="N", help=f"number of shards (overrides {variable_of('shards')})"
    )
    return redis_options


def build_dead_parser() -> argparse.ArgumentParser:
    """The parser of ``wsq-worker dead ...`` (what follows ``dead``)."""
    redis_options = _redis_options()
    parser = argparse.ArgumentParser(
        prog="wsq-worker dead",
        description=_DEAD_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,show,replay,purge}")
    listing = commands.add_parser(
        "list",
        parents=[redis_options],
        help="print the dead letters, oldest first, one per line",
        description="Print the dead letters of every shard, oldest first, one per line: SHARD:ID, "
        "action, connection id, attempts, failed_at and error.",
    )
    listing.add_argument(
        "--count", type=_positive_int, default=100, metavar="N", help="at most N entries (default 100)"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line, with every field")
    replay = commands.add_parser(
        "replay",
        parents=[redis_options],
        help="put dead letters back into the inbound stream",
        description="Put dead letters back into the inbound stream, as new events (attempt 1).",
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "ids",
        nargs="*",
        default=[],
        metavar="SHARD:ID",
        help="the dead letters to replay (as dead list names them)",
    )
    which.add_argument("--all", action="store_true", help="every dead letter there is now")
    replay.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a progress bar on stderr (default: when stderr is a terminal)",
    )
    show = commands.add_parser(
        "show",
        parents=[redis_options],
        help="print one dead letter in full, as JSON",
        description="Print one dead letter in full, as an indented JSON object: the fields of "
        'dead list --json (the event\'s own fields under "event").',
    )
    show.add_argument("id", metavar="SHARD:ID", help="the dead letter (as dead list names it)")
    purge = commands.add_parser(
        "purge",
        parents=[redis_options],
        help="delete dead letters for good",
        description="Delete dead letters for good (replay puts them back instead). --all deletes "
        "every dead letter there is now, and only with --yes.",
    )
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", default=[], metavar="SHARD:ID", help="the dead letters to delete")
    which.add_argument("--all", action="store_true", help="every dead letter there is now (needs --yes)")
    purge.add_argument("--yes", action="store_true", help="confirm --all")
    return parser


_STATUS_DESCRIPTION = f"""\
Show what a wsq deployment is doing, as Redis knows it:

  gateways      the live ones (a heartbeat within --node-timeout, default
                {NODE_TIMEOUT_MS // 1000} s, the gateways' WSQ_NODE_TIMEOUT_S default) with their
                connections; the others, not yet reaped, as stale
  workers       the consumers of the group {CONSUMER_GROUP!r} on the inbound partitions: live
                when one read within {CONSUMER_LIVE_MS // 1000} s
  inbound       events in the stream, pending (read, not yet done) and lag (not yet read)
  dead letters  and delayed retries (messages waiting for their next attempt)

then a row per shard with anything in it. --json prints the same as one JSON object.
Redis: --redis-url, --key-prefix, --shards and --redis-cluster, else {variable_of("redis_url")},
{variable_of("key_prefix")}, {variable_of("shards")} and {variable_of("redis_cluster")}.
"""

_SEND_DESCRIPTION = f"""\
Push {{"action": ACTION, "data": DATA}} to WebSocket connections, with the SDK's Publisher.

  TARGET   connection:ID   one connection (its id, as the gateway gave it)
           user:ID         every connection of a user, on every gateway
           group:NAME      every member of a group
           all             every connection of every gateway
  DATA     JSON (default null)

Prints how many commands were written: one per gateway holding a connection of the target
(0 when none does). Redis: as `wsq-worker dead`: --redis-url, --key-prefix, --shards and
--redis-cluster, else {variable_of("redis_url")} and the others.

example:
  wsq-worker send group:lobby chat_message '{{"text": "maintenance at 18:00"}}'
"""


def build_status_parser() -> argparse.ArgumentParser:
    """The parser of ``wsq-worker status ...`` (what follows ``status``)."""
    parser = argparse.ArgumentParser(
        prog="wsq-worker status",
        description=_STATUS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_redis_options()],
    )
    parser.add_argument("--json", action="store_true", help="one JSON object, with every count")
    parser.add_argument(
        "--node-timeout",
        type=_positive_int,
        default=NODE_TIMEOUT_MS // 1000,
        metavar="S",
        help=f"a gateway is live when its heartbeat is this recent (default {NODE_TIMEOUT_MS // 1000})",
    )
    return parser


def build_top_parser() -> argparse.ArgumentParser:
    """The parser of ``wsq-worker top ...`` (what follows ``top``)."""
    parser = argparse.ArgumentParser(
        prog="wsq-worker top",
        description="What wsq-worker status shows, redrawn every --interval seconds, under a line of "
        "rates since the last refresh: events the workers read per second (their consumer groups' "
        "entries-read), connections opened or closed, dead letters added. On a terminal each "
        "refresh replaces the last; piped, they follow each other. A Redis failure is shown, and "
        "the next refresh tries again. Ctrl-C quits.",
        parents=[_redis_options()],
    )
    parser.add_argument(
        "--interval",
        type=_positive_float,
        default=2.0,
        metavar="S",
        help="seconds between refreshes (default 2)",
    )
    parser.add_argument(
        "--iterations",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="stop after N refreshes (default 0: until Ctrl-C); the exit status is 1 if the last failed",
    )
    parser.add_argument(
        "--node-timeout",
        type=_positive_int,
        default=NODE_TIMEOUT_MS // 1000,
        metavar="S",
        help=f"a gateway is live when its heartbeat is this recent (default {NODE_TIMEOUT_MS // 1000})",
    )
    return parser


def build_send_parser() -> argparse.ArgumentParser:
    """The parser of ``wsq-worker send ...`` (what follows ``send``)."""
    parser = argparse.ArgumentParser(
        prog="wsq-worker send",
        description=_SEND_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_redis_options()],
    )
    parser.add_argument("target", metavar="TARGET", help="connection:ID, user:ID, group:NAME or all")
    parser.add_argument("action", metavar="ACTION", help="the frame's action")
    parser.add_argument("data", metavar="DATA", nargs="?", default="null", help="JSON (default null)")
    parser.add_argument(
        "--exclude", metavar="CONNECTION_ID", help="a connection not to push to (group:NAME only)"
    )
    return parser


def load_worker(target: str) -> Worker:
    """The Worker named by ``module:attribute``; ``TargetError`` when there is none."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise TargetError(f"TARGET must be MODULE:ATTRIBUTE, like app:worker, not {target!r}")
    if sys.path[:1] != [os.getcwd()]:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only when the target module itself is missing: a missing dependency of it keeps its traceback.
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise TargetError(f"could not import module {module_name!r}: {exc}") from None
        raise
    found: object = module
    for name in attribute.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(found, Worker) and callable(found):
        found = found()
    if not isinstance(found, Worker):
        raise TargetError(
            f"{target} is {type(found).__name__}, not a wsq_worker.Worker nor a function returning one"
        )
    return found


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Else a TARGET, even a module named dead, status or send.
    if arguments[:1] == ["dead"]:
        return dead_main(arguments[1:])
    if arguments[:1] == ["status"]:
        return status_main(arguments[1:])
    if arguments[:1] == ["top"]:
        return top_main(arguments[1:])
    if arguments[:1] == ["send"]:
        return send_main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    configure_logging(args.log_level.upper())
    try:
        worker = load_worker(args.target)
    except TargetError as exc:
        parser.error(str(exc))  # exits with status 2
    except SettingsError as exc:  # Worker(...) made at import, from malformed WSQ_* variables
        return _bad_setting(exc)
    if args.concurrency is not None:
        worker.concurrency = args.concurrency
    if args.redis_url is not None:
        worker.redis_url = args.redis_url
    if args.redis_cluster is not None:
        worker.redis_cluster = args.redis_cluster
    if args.key_prefix is not None:
        worker.key_prefix = args.key_prefix
    if args.shards is not None:
        worker.shards = args.shards
    if args.claim_idle_ms is not None:
        worker.claim_idle_ms = args.claim_idle_ms
    if args.max_attempts is not None:
        worker.max_attempts = args.max_attempts
    if args.max_dead_letters is not None:
        worker.max_dead_letters = args.max_dead_letters
    if args.metrics_port is not None:
        worker.metrics_port = args.metrics_port
    if worker.metrics_port:
        try:
            check_metrics_available()
        except RuntimeError as exc:
            print(f"wsq-worker: {exc}", file=sys.stderr)
            return 2
    try:
        worker.run()
    except SettingsError as exc:  # out of range, checked at start (after the options above)
        return _bad_setting(exc)
    except WorkerFailedError as exc:  # a Redis it can't use, or a background task died (logged)
        print(f"wsq-worker: {exc}", file=sys.stderr)
        return 1
    return 0


def _bad_setting(exc: SettingsError) -> int:
    print(f"wsq-worker: invalid setting: {exc}", file=sys.stderr)
    return 2


def dead_main(argv: Sequence[str]) -> int:
    """``wsq-worker dead list|replay ...``; the exit status (1 when Redis failed, its number of
    shards is another, or a dead letter was missing)."""
    parser = build_dead_parser()
    args = parser.parse_args(argv)
    settings = _redis_settings(parser, args)
    keys = keys_for(settings.key_prefix, settings.shards)
    if args.command == "purge" and args.all and not args.yes:
        parser.error("purge --all deletes every dead letter for good: add --yes to confirm")
    names: list[str] = [args.id] if args.command == "show" else getattr(args, "ids", [])
    parsed = [(name, _dead_letter_id(name, keys.shards)) for name in names]
    ids = [entry for _, entry in parsed if entry is not None]
    malformed = [name for name, entry in parsed if entry is None]
    if malformed:
        parser.error(
            f"not a dead letter's SHARD:ID (like 3:1764316800123-0, SHARD below {keys.shards}): "
            f"{', '.join(malformed)}"
        )
    client: SyncClient | None = None
    try:
        client = sync_redis(settings.redis_url, cluster=settings.redis_cluster, decode_responses=True)
        if not _same_shards(client, keys, "dead"):
            return 1
        if args.command == "list":
            return _dead_list(client, keys, args.count, as_json=args.json)
        if args.command == "show":
            return _dead_show(client, keys, ids[0])
        if args.command == "purge":
            return _dead_purge(client, keys, ids, purge_all=args.all)
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        return _dead_replay(client, keys, ids, replay_all=args.all, progress=progress)
    except REDIS_ERRORS as exc:
        print(f"wsq-worker dead: Redis failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()


def _redis_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ConnectionSettings:
    """The Redis options of an ops command (``--redis-url``, ``--key-prefix``, ``--shards``,
    ``--redis-cluster``) over the environment; a malformed one is a usage error (exit 2)."""
    try:
        return connection_from_env(
            redis_url=args.redis_url,
            key_prefix=args.key_prefix,
            shards=args.shards,
            redis_cluster=args.redis_cluster,
        )
    except ValueError as exc:
        parser.error(str(exc))


def _same_shards(client: SyncClient, keys: Keys, command: str) -> bool:
    """Whether ``keys.shards`` is the deployment's number of shards (or none is recorded); when
    not, says so on stderr."""
    recorded = cast("str | None", client.get(keys.shards_key))  # the deployment's, if recorded
    if recorded is None or recorded == str(keys.shards):
        return True
    print(
        f"wsq-worker {command}: {variable_of('shards')}={keys.shards}, but this deployment "
        f"(prefix {keys.prefix!r}) uses {recorded} shards: pass --shards {recorded}",
        file=sys.stderr,
    )
    return False


def status_main(argv: Sequence[str]) -> int:
    """``wsq-worker status [--json]``; the exit status (1 when Redis failed or its number of
    shards is another)."""
    parser = build_status_parser()
    args = parser.parse_args(argv)
    settings = _redis_settings(parser, args)
    keys = keys_for(settings.key_prefix, settings.shards)
    client: SyncClient | None = None
    try:
        client = sync_redis(settings.redis_url, cluster=settings.redis_cluster, decode_responses=True)
        if not _same_shards(client, keys, "status"):
            return 1
        status = read_status(client, keys, node_timeout_ms=args.node_timeout * 1000)
    except REDIS_ERRORS as exc:
        print(f"wsq-worker status: Redis failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()
    print(json.dumps(status) if args.json else format_status(status))
    return 0


def top_main(argv: Sequence[str]) -> int:
    """``wsq-worker top``; the exit status (0 on Ctrl-C; with --iterations, 1 when the last
    refresh failed or the number of shards is another)."""
    parser = build_top_parser()
    args = parser.parse_args(argv)
    settings = _redis_settings(parser, args)
    keys = keys_for(settings.key_prefix, settings.shards)
    client = sync_redis(settings.redis_url, cluster=settings.redis_cluster, decode_responses=True)
    last_failed = [False]

    def read() -> dict[str, Any]:
        last_failed[0] = True
        if not _same_shards(client, keys, "top"):
            raise _WrongShards(f"not {keys.shards} shards: see above")
        status = read_status(client, keys, node_timeout_ms=args.node_timeout * 1000)
        last_failed[0] = False
        return status

    screen = Screen(sys.stdout, in_place=sys.stdout.isatty())
    try:
        watch(
            read,
            screen,
            interval=args.interval,
            iterations=args.iterations,
            failures=(*REDIS_ERRORS, _WrongShards),
        )
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
    return 1 if last_failed[0] else 0


class _WrongShards(Exception):
    """The deployment records another number of shards (``_same_shards`` said which)."""


def send_main(argv: Sequence[str]) -> int:
    """``wsq-worker send TARGET ACTION [DATA]``; the exit status (2 for a malformed target,
    action or DATA, 1 when the Publisher failed)."""
    parser = build_send_parser()
    args = parser.parse_args(argv)
    kind, _, name = args.target.partition(":")
    if (kind, name) != ("all", "") and (kind not in ("connection", "user", "group") or not name):
        parser.error(f"TARGET must be connection:ID, user:ID, group:NAME or all, not {args.target!r}")
    if args.exclude is not None and kind != "group":
        parser.error("--exclude goes with a group:NAME target only")
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        parser.error(f"DATA is not JSON ({exc}): {args.data!r}")
    try:
        push_frame(args.action, data)  # a malformed action: before connecting
        settings = connection_from_env(
            redis_url=args.redis_url,
            key_prefix=args.key_prefix,
            shards=args.shards,
            redis_cluster=args.redis_cluster,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        with Publisher(
            settings.redis_url,
            settings.key_prefix,
            shards=settings.shards,
            redis_cluster=settings.redis_cluster,
        ) as publisher:
            if kind == "connection":
                target = publisher.to(name)
            elif kind == "user":
                target = publisher.to_user(name)
            elif kind == "group":
                target = publisher.to_group(name)
            else:
                target = publisher.broadcast()
            written = target.send(args.action, data, exclude=args.exclude)
    except ValueError as exc:  # a malformed connection id, user id or group name
        parser.error(str(exc))
    except PublishError as exc:
        print(f"wsq-worker send: {exc}", file=sys.stderr)
        return 1
    except REDIS_ERRORS as exc:  # connecting to a cluster, before the Publisher's first command
        print(f"wsq-worker send: Redis failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {written} command{'' if written == 1 else 's'}")
    return 0


_DEAD_LETTER_ID = re.compile(r"([0-9]{1,4}):([0-9]{1,20}-[0-9]{1,20})")
_REPLAY_BATCH = 100


def _dead_letter_id(name: str, shards: int) -> tuple[int, str] | None:
    """(shard, entry id) of a dead letter's ``SHARD:ID``; None when malformed."""
    match = _DEAD_LETTER_ID.fullmatch(name)
    if match is None or int(match.group(1)) >= shards:
        return None
    return int(match.group(1)), match.group(2)


def _entry_order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence)


def _dead_list(client: SyncClient, keys: Keys, count: int, *, as_json: bool) -> int:
    """The oldest ``count`` dead letters of every shard (by their ids' time), as one list."""
    pipe = client.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.xrange(keys.dead_letters(shard), count=count)
        pipe.xlen(keys.dead_letters(shard))
    replies = pipe.execute()
    entries: list[tuple[int, str, dict[str, str]]] = [
        (shard, entry_id, fields)
        for shard, shard_entries in enumerate(replies[::2])
        for entry_id, fields in shard_entries
    ]
    entries.sort(key=lambda entry: (_entry_order(entry[1]), entry[0]))
    for shard, entry_id, fields in entries[:count]:
        name = f"{shard}:{entry_id}"
        print(json.dumps(_dead_json(name, shard, fields)) if as_json else _dead_line(name, fields))
    left = sum(int(length) for length in replies[1::2]) - min(count, len(entries))
    if left > 0:
        print(f"... and {left} more (--count)", file=sys.stderr)
    if not entries and not as_json:
        print("no dead letters")
    return 0


def _dead_show(client: SyncClient, keys: Keys, dead_letter: tuple[int, str]) -> int:
    shard, entry_id = dead_letter
    found: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
        keys.dead_letters(shard), min=entry_id, max=entry_id
    )
    if not found:
        print(f"wsq-worker dead: no dead letter {shard}:{entry_id}", file=sys.stderr)
        return 1
    print(json.dumps(_dead_json(f"{shard}:{entry_id}", shard, found[0][1]), indent=2, ensure_ascii=False))
    return 0


def _dead_purge(client: SyncClient, keys: Keys, ids: list[tuple[int, str]], *, purge_all: bool) -> int:
    if purge_all:
        ids = [
            (shard, entry_id)
            for shard in range(keys.shards)
            for entry_id in _every_dead_letter(client, keys, shard)
        ]
    pipe = client.pipeline(transaction=False)
    for shard, entry_id in ids:
        pipe.xdel(keys.dead_letters(shard), entry_id)
    deleted = pipe.execute() if ids else []
    missing = [
        f"{shard}:{entry_id}" for (shard, entry_id), count in zip(ids, deleted, strict=True) if not count
    ]
    purged = len(ids) - len(missing)
    print(f"deleted {purged} dead letter{'' if purged == 1 else 's'}")
    for name in missing:
        print(f"wsq-worker dead: no dead letter {name} (already deleted?)", file=sys.stderr)
    return 1 if missing and not purge_all else 0


def _dead_line(name: str, fields: dict[str, str]) -> str:
    error = fields.get("error", "").replace("\n", "\\n")
    failed_at = _failed_at(fields)
    return (
        f"{name}  {_action(fields)}  {fields.get('connection_id', '?')}  "
        f"attempts={fields.get('attempts', '?')}  "
        f"failed_at={failed_at.isoformat(timespec='milliseconds') if failed_at else '?'}  error={error}"
    )


def _dead_json(name: str, shard: int, fields: dict[str, str]) -> dict[str, Any]:
    attempts = fields.get("attempts", "")
    failed_at = fields.get("failed_at", "")
    return {
        "id": name,
        "shard": shard,
        "action": _action(fields),
        "connection_id": fields.get("connection_id"),
        "attempts": int(attempts) if attempts.isdigit() else None,
        "error": fields.get("error"),
        "failed_at": int(failed_at) if failed_at.isdigit() else None,
        "worker": fields.get("worker"),
        "event": {name: value for name, value in fields.items() if name not in DEAD_LETTER_FIELDS},
    }


def _action(fields: dict[str, str]) -> str:
    """A message's action, or ``(connect)``/``(disconnect)`` for the other events."""
    if fields.get("type") != "message":
        return f"({fields.get('type', '?')})"
    try:
        action = json.loads(fields.get("frame", ""))["action"]
    except (ValueError, TypeError, KeyError):
        return "?"
    return action if isinstance(action, str) else "?"


def _failed_at(fields: dict[str, str]) -> datetime | None:
    text = fields.get("failed_at", "")
    return datetime.fromtimestamp(int(text) / 1000, tz=UTC) if text.isdigit() else None


def _dead_replay(
    client: SyncClient, keys: Keys, ids: list[tuple[int, str]], *, replay_all: bool, progress: bool
) -> int:
    script = client.register_script(REPLAY_SCRIPT)
    if replay_all:
        ids = [
            (shard, entry_id)
            for shard in range(keys.shards)
            for entry_id in _every_dead_letter(client, keys, shard)
        ]
    replayed, missing = 0, []
    bar = Progress("replaying", len(ids), sys.stderr, enabled=progress)
    for shard, entry_id in ids:
        if script(
            keys=[keys.dead_letters(shard), keys.inbound_stream(shard)], args=[entry_id, *REPLAY_DROPS]
        ):
            replayed += 1
        else:
            missing.append(f"{shard}:{entry_id}")
        bar.advance()
    bar.close()
    print(f"replayed {replayed} dead letter{'' if replayed == 1 else 's'} into the inbound stream")
    for name in missing:
        print(f"wsq-worker dead: no dead letter {name} (already replayed?)", file=sys.stderr)
    return 1 if missing and not replay_all else 0


def _every_dead_letter(client: SyncClient, keys: Keys, shard: int) -> Iterator[str]:
    """The ids of the dead letters of ``shard`` there are now (not those a replayed event adds
    meanwhile)."""
    dead = keys.dead_letters(shard)
    last: list[tuple[str, Any]] = client.xrevrange(dead, count=1)  # type: ignore[assignment]
    if not last:
        return
    end, start = last[0][0], "-"
    while True:
        batch: list[tuple[str, Any]] = client.xrange(dead, min=start, max=end, count=_REPLAY_BATCH)  # type: ignore[assignment]
        yield from (entry_id for entry_id, _ in batch)
        if len(batch) < _REPLAY_BATCH:
            return
        start = f"({batch[-1][0]}"


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _shards(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_SHARDS}, not {value}")
    return value
