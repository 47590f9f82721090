"""Settings come only from WSQ_* variables, and every one is documented."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydantic import ValidationError

from wsq_devkit import ManagedProcess, free_port, run_module, wait_until
from wsq_gateway.cli import main
from wsq_gateway.logs import resolve_format
from wsq_gateway.settings import Settings, describe_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"WSQ_{name.upper()}", raising=False)
    settings = Settings()
    assert (settings.host, settings.port, settings.path) == ("0.0.0.0", 8000, "/ws")
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.key_prefix == "wsq"
    assert settings.max_message_bytes == 64 * 1024
    assert settings.jwt_secret is None
    assert settings.log_format == "auto"
    assert re.fullmatch(r"gw-[0-9a-f]{12}", settings.node_id)
    assert Settings().node_id != settings.node_id, "a generated node id is unique per process start"


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSQ_PORT", "9001")
    monkeypatch.setenv("WSQ_NODE_ID", "edge-1")
    monkeypatch.setenv("WSQ_JWT_SECRET", "s" * 40)
    monkeypatch.setenv("WSQ_LOG_FORMAT", "CONSOLE")
    monkeypatch.setenv("WSQ_HEARTBEAT_S", "2.5")
    settings = Settings()
    assert (settings.port, settings.node_id, settings.log_format, settings.heartbeat_s) == (
        9001,
        "edge-1",
        "console",
        2.5,
    )
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == "s" * 40
    assert "s" * 40 not in repr(settings), "the secret never appears in logs or reprs"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WSQ_PORT", "http"),
        ("WSQ_PORT", "70000"),
        ("WSQ_PATH", "ws"),
        ("WSQ_NODE_ID", "has.dot"),
        ("WSQ_LOG_FORMAT", "xml"),
        ("WSQ_MAX_MESSAGE_BYTES", "0"),
        ("WSQ_SSL_CERTFILE", "/only/the/cert.pem"),
        ("WSQ_FORWARD_HEADERS", "cookie,not a header"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_cli_reports_bad_settings_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WSQ_PORT", "not-a-port")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "WSQ_PORT: Input should be a valid integer" in err
    assert "'not-a-port'" in err


def run_gateway(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """``python -m wsq_gateway`` as a real process, with only the given WSQ_* variables."""
    return run_module("wsq_gateway", *args, variables=variables)


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        (
            {"WSQ_PORT": "http"},
            "wsq-gateway: invalid setting WSQ_PORT: Input should be a valid integer, unable to parse "
            "string as an integer (got 'http')",
        ),
        (
            {"WSQ_LOG_FORMAT": "xml"},
            "wsq-gateway: invalid setting WSQ_LOG_FORMAT: Input should be 'json', 'console' or 'auto' "
            "(got 'xml')",
        ),
        (
            {"WSQ_REDIS_URL": "http://user:hunter2@redis.example:6379/0"},
            "wsq-gateway: invalid setting WSQ_REDIS_URL: must be a redis://, rediss:// (TLS) or "
            "unix:// URL, not http://",
        ),
        (
            {"WSQ_REDIS_URL": "localhost:6379"},
            "wsq-gateway: invalid setting WSQ_REDIS_URL: must be a redis://, rediss:// (TLS) or unix:// URL",
        ),
        (
            {"WSQ_REDIS_URL": "redis://user:hunter2@redis.example:port/0"},
            "wsq-gateway: invalid setting WSQ_REDIS_URL: is not a usable Redis URL: Port could not be "
            "cast to integer value as 'port'",
        ),
        (
            {"WSQ_NODE_HEARTBEAT_S": "10"},
            "wsq-gateway: invalid settings: WSQ_NODE_TIMEOUT_S must be more than twice WSQ_NODE_HEARTBEAT_S",
        ),
    ],
)
def test_a_bad_setting_stops_the_process_with_one_line_and_status_2(
    variables: dict[str, str], line: str
) -> None:
    result = run_gateway(**variables)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""
    assert "hunter2" not in result.stderr, "a Redis URL's password is never printed"


def test_each_bad_setting_gets_its_line() -> None:
    result = run_gateway(WSQ_PORT="http", WSQ_REDIS_URL="http://x")
    assert result.returncode == 2
    assert [line.split(":")[1] for line in result.stderr.splitlines()] == [
        " invalid setting WSQ_PORT",
        " invalid setting WSQ_REDIS_URL",
    ]


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name, default, _ in describe_settings():
        assert name in out
        assert f"(default: {default})" in out


def test_forwarded_headers_are_lower_case_and_listed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSQ_FORWARD_HEADERS", " Cookie,user-agent,, COOKIE ")
    assert Settings().forwarded_headers == ("cookie", "user-agent")


def test_readme_settings_table_matches_the_code() -> None:
    rows = re.findall(r"^\| `(WSQ_[A-Z_]+)` \| (.+?) \| (.+?) \|$", README.read_text(), re.MULTILINE)
    documented = {name: (default.strip("`"), meaning) for name, default, meaning in rows}
    expected = {name: (default, meaning) for name, default, meaning in describe_settings()}
    assert documented == expected


def test_help_run_as_a_process_lists_every_setting_and_the_options() -> None:
    result = run_gateway("--help")
    assert result.returncode == 0
    out = " ".join(result.stdout.split())  # descriptions are wrapped
    for option in ("--host ADDRESS", "--port PORT", "--version"):
        assert option in out
    for name, default, description in describe_settings():
        assert f"{name} (default: {default})" in out
        assert " ".join(description.split()) in out


def _healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_host_and_port_options_override_the_variables(redis_url: str, key_prefix: str) -> None:
    port, unused = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("WSQ_")}
    env |= {"WSQ_REDIS_URL": redis_url, "WSQ_KEY_PREFIX": key_prefix, "WSQ_PORT": str(unused)}
    env |= {"WSQ_HOST": "192.0.2.1"}  # not an address of this host: the option must win
    with ManagedProcess.python_module(
        "gateway", "wsq_gateway", "--host", "127.0.0.1", "--port", str(port), env=env
    ) as gateway:
        wait_until(lambda: _healthz(port), timeout=20, message="the gateway on --port")
        assert f"ws://127.0.0.1:{port}/ws" in gateway.output()
        assert not _healthz(unused)


@pytest.mark.parametrize("value", ["http", "70000", "-1"])
def test_a_bad_port_option_exits_2(value: str) -> None:
    result = run_gateway("--port", value)
    assert result.returncode == 2
    assert "argument --port" in result.stderr
    assert "Traceback" not in result.stderr


def _gateway_log(redis_url: str, key_prefix: str, *, terminal: bool, log_format: str | None) -> list[str]:
    """The gateway's log lines up to "listening", its stderr a terminal (a pseudo-terminal) or a pipe."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("WSQ_")}
    env |= {"WSQ_REDIS_URL": redis_url, "WSQ_KEY_PREFIX": key_prefix, "WSQ_PORT": str(port)}
    if log_format is not None:
        env["WSQ_LOG_FORMAT"] = log_format
    reader, writer = pty.openpty() if terminal else os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "wsq_gateway"], env=env, stdin=subprocess.DEVNULL, stdout=writer, stderr=writer
    )
    os.close(writer)
    output = b""
    try:
        while b"listening" not in output:
            ready, _, _ = select.select([reader], [], [], 20)
            assert ready, f"no listening line: {output!r}"
            chunk = os.read(reader, 65536)
            assert chunk, f"the gateway exited: {output!r}"
            output += chunk
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        os.close(reader)
    return [line for line in output.decode().replace("\r", "").splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("terminal", "log_format", "as_json"),
    [
        (True, None, False),  # auto, a person reading
        (False, None, True),  # auto, a pipe: a collector
        (True, "json", True),
        (False, "console", False),
    ],
)
def test_log_format_auto_is_human_readable_on_a_terminal_and_json_elsewhere(
    redis_url: str, key_prefix: str, terminal: bool, log_format: str | None, as_json: bool
) -> None:
    lines = _gateway_log(redis_url, key_prefix, terminal=terminal, log_format=log_format)
    [listening] = [line for line in lines if "listening" in line]
    if as_json:
        assert json.loads(listening)["event"] == "listening"
    else:
        assert not listening.lstrip().startswith("{")
        assert re.match(r"\S*\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", listening), listening
        assert "info" in listening
        assert "listening" in listening


def test_resolve_format() -> None:
    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    assert resolve_format("auto", Stream(tty=True)) == "console"
    assert resolve_format("auto", Stream(tty=False)) == "json"
    assert resolve_format("json", Stream(tty=True)) == "json"
    assert resolve_format("console", Stream(tty=False)) == "console"
