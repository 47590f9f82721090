"""The ``wsq-worker`` command (also ``python -m wsq_worker``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from wsq_worker import __version__, constants
from wsq_worker.worker import Worker

__all__ = ["build_parser", "load_worker", "main"]

_DESCRIPTION = """\
Run a wsq worker: handle the events the wsq gateways append to Redis.

TARGET is MODULE:ATTRIBUTE, like uvicorn's: the module is imported (the current directory
comes first on sys.path) and ATTRIBUTE is a wsq_worker.Worker, or a function taking no
arguments that returns one. The options below override the Worker's own settings.
"""

_EPILOG = f"""\
environment:
  {constants.REDIS_URL_ENV}    Redis URL when neither --redis-url nor the Worker sets one
                   (default {constants.DEFAULT_REDIS_URL})
  {constants.KEY_PREFIX_ENV}   prefix of every Redis key (default {constants.DEFAULT_KEY_PREFIX})

SIGINT or SIGTERM stops reading events, lets in-flight handlers finish (up to the
Worker's shutdown_timeout), writes their replies and exits with status 0.

example:
  wsq-worker chat.app:worker --concurrency 50 --log-level debug
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
    parser.add_argument("--redis-url", metavar="URL", help=f"Redis URL (overrides {constants.REDIS_URL_ENV})")
    parser.add_argument(
        "--key-prefix", metavar="PREFIX", help=f"Redis key prefix (overrides {constants.KEY_PREFIX_ENV})"
    )
    parser.add_argument(
        "--log-level", choices=_LOG_LEVELS, default="info", help="logging level (default: info)"
    )
    parser.add_argument("--version", action="version", version=f"wsq-worker {__version__}")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    try:
        worker = load_worker(args.target)
    except TargetError as exc:
        parser.error(str(exc))  # exits with status 2
    if args.concurrency is not None:
        worker.concurrency = args.concurrency
    if args.redis_url is not None:
        worker.redis_url = args.redis_url
    if args.key_prefix is not None:
        worker.key_prefix = args.key_prefix
    worker.run()
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
