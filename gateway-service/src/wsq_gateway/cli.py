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
        print("wsq-gateway: invalid settings", file=sys.stderr)
        for error in exc.errors():
            name = f"WSQ_{str(error['loc'][0]).upper()}: " if error["loc"] else ""
            given = f" (got {error['input']!r})" if error["loc"] else ""
            print(f"  {name}{error['msg']}{given}", file=sys.stderr)
        return 2
    return run(settings)
