"""``wsq-gateway``: runs the gateway. It is configured only by WSQ_* environment variables."""

from __future__ import annotations

import argparse
import sys
import textwrap

from pydantic import ValidationError

from wsq_gateway import __version__
from wsq_gateway.server import run
from wsq_gateway.settings import Settings, describe_settings


def _help_epilog() -> str:
    lines = ["settings (environment variables):", ""]
    for name, default, description in describe_settings():
        lines.append(f"  {name}  (default: {default})")
        lines += textwrap.wrap(description, 76, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


# Settings whose value an error line must not repeat: a URL may hold a password.
_SECRET_SETTINGS = frozenset({"redis_url", "jwt_secret"})


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
        "for the workers, and delivers pushes. It takes no options: set WSQ_* variables.",
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wsq-gateway {__version__}")
    parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        for line in settings_errors(exc):
            print(f"wsq-gateway: {line}", file=sys.stderr)
        return 2
    return run(settings)
