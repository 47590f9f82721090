"""``wsq-gateway``: runs the gateway. It is configured by WSQ_* environment variables; ``--host``
and ``--port`` override WSQ_HOST and WSQ_PORT."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from pydantic import ValidationError

from wsq_gateway import __version__
from wsq_gateway.server import run
from wsq_gateway.settings import Settings, describe_settings


def _help_epilog() -> str:
    lines = ["settings (environment variables; --host and --port override WSQ_HOST, WSQ_PORT):", ""]
    for name, default, description in describe_settings():
        lines.append(f"  {name}  (default: {default})")
        lines += textwrap.wrap(description, 76, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, not {port}")
    return port


# Settings whose value an error line must not repeat: a URL may hold a password.
_SECRET_SETTINGS = frozenset({"redis_url", "jwt_secret", "api_keys"})


def settings_errors(exc: ValidationError) -> list[str]:
    """One line per bad setting: its variable, what is wrong, and the value given (unless it may
    hold a secret)."""
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check of several settings: the message names them
            lines.append(f"invalid settings: {message}")
            continue
        field = str(error["loc"][0])
        given = "" if field in _SECRET_SETTINGS else f" (got {error['input']!r})"
        lines.append(f"invalid setting WSQ_{field.upper()}: {message}{given}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wsq-gateway",
        description="wsq gateway: holds WebSocket connections, queues client frames in Redis "
        "for the workers, and delivers pushes. It is configured by the WSQ_* variables below.",
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", metavar="ADDRESS", help="address to listen on (overrides WSQ_HOST)")
    parser.add_argument(
        "--port", type=_port, metavar="PORT", help="TCP port to listen on, 0-65535 (overrides WSQ_PORT)"
    )
    parser.add_argument("--version", action="version", version=f"wsq-gateway {__version__}")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for line in settings_errors(exc):
            print(f"wsq-gateway: {line}", file=sys.stderr)
        return 2
    return run(settings)
