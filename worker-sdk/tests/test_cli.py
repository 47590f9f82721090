"""``python -m wsq_worker module:attribute`` as a real process against the private Redis."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from worker_harness import CREATE_NODE_STREAM, str_entries

import wsq_worker
from wsq_devkit import ManagedProcess, RedisServer, free_port, run_module, wait_until
from wsq_devkit.redis_typing import XaddFields
from wsq_protocol.keys import DEFAULT_SHARDS, keys_for

APPS = Path(__file__).resolve().parent / "apps"
NODE = "gw-cli"
CONNECTION_ID = f"{NODE}.q2uE4nK0m5Zr8VtY1xWb7A"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def in_apps_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes start in tests/apps: the CLI imports modules from the current directory."""
    monkeypatch.chdir(APPS)


def inbound_of(key_prefix: str, shards: int = DEFAULT_SHARDS) -> str:
    """The inbound partition of the gateway NODE."""
    return keys_for(key_prefix, shards).inbound_stream_of(NODE)


def out_of(key_prefix: str, shards: int = DEFAULT_SHARDS) -> str:
    """The stream of the gateway NODE."""
    return keys_for(key_prefix, shards).node_stream(NODE)


def append_message(
    client: redis.Redis, key_prefix: str, action: str, data: Any, frame_id: str, shards: int = DEFAULT_SHARDS
) -> None:
    """A message of a connection of NODE, in its inbound partition (of ``shards`` shards)."""
    frame = json.dumps({"action": action, "data": data, "id": frame_id})
    fields: XaddFields = {
        "v": "1",
        "type": "message",
        "connection_id": CONNECTION_ID,
        "node": NODE,
        "ts": "1",
        "frame": frame,
    }
    client.eval(CREATE_NODE_STREAM, 1, out_of(key_prefix, shards))  # as its live gateway keeps it
    client.xadd(inbound_of(key_prefix, shards), fields)


def wait_for_frames(
    client: redis.Redis, key_prefix: str, count: int, shards: int = DEFAULT_SHARDS
) -> list[Any]:
    def frames() -> list[Any] | None:
        entries = str_entries(client.xrange(out_of(key_prefix, shards)))
        return [json.loads(fields["frame"]) for _, fields in entries] if len(entries) >= count else None

    return wait_until(frames, timeout=20, message=f"{count} frames")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_module("wsq_worker", *args, cwd=APPS)


@pytest.mark.usefixtures("in_apps_directory")
def test_cli_runs_the_worker(redis_url: str, key_prefix: str, client: redis.Redis) -> None:
    environment = {"WSQ_REDIS_URL": redis_url, "WSQ_KEY_PREFIX": key_prefix}
    with ManagedProcess.python_module("worker", "wsq_worker", "echo_app:worker", env=environment) as process:
        append_message(client, key_prefix, "echo", {"hello": "world"}, "r1")
        assert wait_for_frames(client, key_prefix, 1) == [
            {"action": "echo", "data": {"hello": "world"}, "id": "r1"}
        ]
        assert process.stop() == 0
        assert (
            f"reading the 16 partitions of the inbound stream ({{{key_prefix}:0}}:inbound" in process.output()
        )


@pytest.mark.usefixtures("in_apps_directory")
def test_sigterm_exits_0_after_finishing_in_flight_handlers(
    redis_url: str, key_prefix: str, client: redis.Redis
) -> None:
    environment = {"WSQ_REDIS_URL": redis_url, "WSQ_KEY_PREFIX": key_prefix}
    with ManagedProcess.python_module("worker", "wsq_worker", "echo_app:worker", env=environment) as process:
        append_message(client, key_prefix, "slow", 1.0, "r1")
        assert wait_for_frames(client, key_prefix, 1) == [{"action": "started", "data": None}]
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, process.output()
        assert wait_for_frames(client, key_prefix, 2)[1] == {"action": "slow", "data": "finished", "id": "r1"}
        assert client.xlen(inbound_of(key_prefix)) == 0, "acknowledged and deleted before exiting"
        assert "SIGTERM" in process.output()


@pytest.mark.usefixtures("in_apps_directory")
def test_cli_options_override_the_worker_and_the_environment(
    redis_url: str, key_prefix: str, client: redis.Redis
) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    environment = {
        "WSQ_REDIS_URL": unreachable,
        "WSQ_KEY_PREFIX": "not-this-one",
        "WSQ_SHARDS": "9",
        "WSQ_CLAIM_IDLE_MS": "1",
        "WSQ_MAX_ATTEMPTS": "1",
        "WSQ_MAX_DEAD_LETTERS": "1",
    }
    options = [
        "--concurrency",
        "7",
        "--claim-idle-ms",
        "4500",
        "--max-attempts",
        "5",
        "--max-dead-letters",
        "0",
        "--redis-url",
        redis_url,
        "--key-prefix",
        key_prefix,
        "--shards",
        "4",
        "--log-level",
        "debug",
    ]
    with ManagedProcess.python_module(
        "worker", "wsq_worker", "echo_app:make_worker", *options, env=environment
    ):
        append_message(client, key_prefix, "settings", None, "r1", shards=4)
        [frame] = wait_for_frames(client, key_prefix, 1, shards=4)
        assert frame["data"] == {
            "concurrency": 7,
            "key_prefix": key_prefix,
            "shards": 4,
            "claim_idle_ms": 4500,
            "max_attempts": 5,
            "max_dead_letters": 0,
        }


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module:worker", "could not import module 'no_such_module'"),
        ("echo_app:nope", "module 'echo_app' has no attribute 'nope'"),
        ("echo_app", "TARGET must be MODULE:ATTRIBUTE"),
        ("echo_app:not_a_worker", "echo_app:not_a_worker is int, not a wsq_worker.Worker"),
    ],
)
def test_bad_target_exits_2_with_a_clear_message(target: str, message: str) -> None:
    result = run_cli(target)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def run_cli_with(variables: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``run_cli()`` with only the given WSQ_* variables."""
    return run_module("wsq_worker", *args, cwd=APPS, variables=variables)


@pytest.mark.parametrize(
    ("variables", "options", "line"),
    [
        ({"WSQ_SHARDS": "many"}, [], "WSQ_SHARDS must be a whole number, not 'many'"),
        (
            {"WSQ_REDIS_CLUSTER": "maybe"},
            [],
            "WSQ_REDIS_CLUSTER must be 1, true, yes or on (or 0, false, no, off), not 'maybe'",
        ),
        ({"WSQ_MAX_ATTEMPTS": "0"}, [], "max_attempts must be 1-9999, not 0 (WSQ_MAX_ATTEMPTS)"),
        ({"WSQ_SHARDS": "5000"}, [], "shards must be 1-1024, not 5000 (WSQ_SHARDS)"),
        (
            {"WSQ_REDIS_URL": "http://user:hunter2@redis.example:6379/0"},
            [],
            "WSQ_REDIS_URL must be a redis://, rediss:// (TLS) or unix:// URL, not http://",
        ),
        (
            {"WSQ_REDIS_URL": "redis://user:hunter2@redis.example:port/0"},
            [],
            "WSQ_REDIS_URL is not a usable Redis URL: Port could not be cast to integer value as 'port'",
        ),
        (
            {},
            ["--redis-url", "localhost:6379"],
            "redis_url must be a redis://, rediss:// (TLS) or unix:// URL",
        ),
    ],
)
def test_a_bad_setting_exits_2_with_one_line(
    variables: dict[str, str], options: list[str], line: str
) -> None:
    result = run_cli_with(variables, "echo_app:worker", *options)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"wsq-worker: invalid setting: {line}"]
    assert "hunter2" not in result.stderr, "a Redis URL's password is never printed"


def test_help_documents_everything() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for text in (
        "MODULE:ATTRIBUTE",
        "--concurrency",
        "--redis-url",
        "--key-prefix",
        "--shards",
        "--log-level",
        "--claim-idle-ms",
        "--max-attempts",
        "--max-dead-letters",
        "WSQ_REDIS_URL",
        "WSQ_KEY_PREFIX",
        "WSQ_SHARDS",
        "WSQ_CLAIM_IDLE_MS",
        "WSQ_MAX_ATTEMPTS",
        "WSQ_MAX_DEAD_LETTERS",
        "SIGTERM",
        "wsq-worker dead",
    ):
        assert text in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "wsq-worker"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert result.stdout.strip() == f"wsq-worker {wsq_worker.__version__}"


def test_version_matches_pyproject() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == wsq_worker.__version__ == "0.2.0"


@contextlib.contextmanager
def a_worker_killable_mid_handler(
    redis_url: str, key_prefix: str, client: redis.Redis, claim_idle_ms: int
) -> Iterator[tuple[ManagedProcess, ManagedProcess]]:
    """Two ``crash_app`` worker processes, one of them running a slow message (id ``r1``):
    (the one running it, the other)."""
    environment = {"WSQ_REDIS_URL": redis_url, "WSQ_KEY_PREFIX": key_prefix}
    options = ["crash_app:worker", "--claim-idle-ms", str(claim_idle_ms)]
    with (
        ManagedProcess.python_module("worker-a", "wsq_worker", *options, env=environment) as a,
        ManagedProcess.python_module("worker-b", "wsq_worker", *options, env=environment) as b,
    ):
        workers = {a.pid: a, b.pid: b}
        for process in workers.values():

            def reading(p: ManagedProcess = process) -> bool:
                return "reading" in p.output()

            wait_until(reading, timeout=20, message=f"{process.name} reads")
        append_message(client, key_prefix, "slow_once", None, "r1")
        [started] = wait_for_frames(client, key_prefix, 1)
        assert started["action"] == "started"
        victim = workers.pop(started["data"])
        [survivor] = workers.values()
        yield victim, survivor


@pytest.mark.usefixtures("in_apps_directory")
def test_sigkill_mid_message_the_other_worker_answers(
    redis_url: str, key_prefix: str, client: redis.Redis
) -> None:
    """Two worker processes; the one running a message is SIGKILLed: the other one claims it after
    --claim-idle-ms and answers, as attempt 2, exactly once."""
    with a_worker_killable_mid_handler(redis_url, key_prefix, client, 500) as (victim, survivor):
        victim.signal(signal.SIGKILL)  # mid-handler: no ack, no shutdown, nothing written
        assert victim.wait(timeout=10) == -signal.SIGKILL

        answer = wait_for_frames(client, key_prefix, 2)[1]
        assert answer == {"action": "slow_once", "data": {"attempt": 2, "pid": survivor.pid}, "id": "r1"}

        def backlog_done() -> bool:
            inbound = inbound_of(key_prefix)
            return client.xlen(inbound) == 0 and client.xpending(inbound, "workers")["pending"] == 0

        wait_until(backlog_done, timeout=20, message="the entry acknowledged")
        assert len(wait_for_frames(client, key_prefix, 2)) == 2, "exactly one reply"
        assert "claimed 1 entries" in survivor.output()
        assert survivor.running()


@pytest.mark.usefixtures("in_apps_directory")
def test_a_sigkilled_workers_consumer_leaves_the_group_once_its_entry_was_answered(
    redis_url: str, key_prefix: str, client: redis.Redis
) -> None:
    """Two worker processes; the one running a message is SIGKILLed: its consumer stays in the
    group while it holds the entry, and is removed by the survivor within stale_consumer_ms +
    claim_idle_ms / 2 of its death, after the survivor claimed and answered the entry, once."""
    claim_idle_ms, block_ms = 500, 200  # crash_app's block_ms
    stale_ms = 3 * max(claim_idle_ms, block_ms)  # Worker.stale_consumer_ms
    inbound = inbound_of(key_prefix)
    with a_worker_killable_mid_handler(redis_url, key_prefix, client, claim_idle_ms) as (victim, survivor):
        [victim_consumer] = [
            c for c in client.xinfo_consumers(inbound, "workers") if f"-{victim.pid}-" in c["name"]
        ]
        assert victim_consumer["pending"] == 1
        victim.signal(signal.SIGKILL)  # mid-handler: no ack, no shutdown, nothing written
        killed_at = time.monotonic()
        assert victim.wait(timeout=10) == -signal.SIGKILL

        seen: list[tuple[dict[str, Any] | None, int]] = []  # the victim's consumer, answers so far

        def victim_removed() -> bool:
            consumers = {c["name"]: c for c in client.xinfo_consumers(inbound, "workers")}
            answers = len(str_entries(client.xrange(out_of(key_prefix)))) - 1  # after "started"
            seen.append((consumers.get(victim_consumer["name"]), answers))
            return victim_consumer["name"] not in consumers

        bound_s = (stale_ms + claim_idle_ms / 2) / 1000
        wait_until(victim_removed, timeout=bound_s + 10, message="the victim's consumer removed")
        removed_after_s = time.monotonic() - killed_at
        assert removed_after_s < bound_s + 2, f"removed {removed_after_s:.1f}s after the kill"
        assert removed_after_s > stale_ms / 1000 - 0.5, "removed only once idle for stale_consumer_ms"
        # While the victim held the entry, its consumer stayed; it went only once answered.
        assert all(consumer is not None for consumer, answers in seen if answers == 0)
        assert all(consumer["pending"] == 0 for consumer, answers in seen if consumer and answers)
        assert seen[-1][1] == 1, "answered before the consumer was removed"

        answer = wait_for_frames(client, key_prefix, 2)[1]
        assert answer == {"action": "slow_once", "data": {"attempt": 2, "pid": survivor.pid}, "id": "r1"}
        assert client.xlen(inbound) == 0
        assert client.xpending(inbound, "workers")["pending"] == 0
        assert len(wait_for_frames(client, key_prefix, 2)) == 2, "exactly one reply"
        [remaining] = client.xinfo_consumers(inbound, "workers")
        assert f"-{survivor.pid}-" in remaining["name"]
        assert remaining["idle"] < stale_ms
        assert f"removed consumer {victim_consumer['name']} from the group" in survivor.output()
        assert survivor.running()


@pytest.mark.usefixtures("in_apps_directory")
def test_a_worker_with_another_number_of_shards_than_the_deployment_exits_1(
    redis_url: str, key_prefix: str, client: redis.Redis
) -> None:
    """It would read other partitions than the gateways write: it refuses to start, in one line."""
    client.set(keys_for(key_prefix).shards_key, "8")
    environment = {"WSQ_REDIS_URL": redis_url, "WSQ_KEY_PREFIX": key_prefix, "WSQ_SHARDS": "16"}
    with ManagedProcess.python_module("worker", "wsq_worker", "echo_app:worker", env=environment) as process:
        assert process.wait(timeout=20) == 1
        output = process.output()
    assert "WSQ_SHARDS=16, but this deployment" in output
    assert "uses 8 shards" in output
    assert "Traceback" not in output
    assert not client.exists(inbound_of(key_prefix)), "no consumer group made"


STARTUP_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    wsq_worker\.worker: worker \S+ reading the 16 "
    r"partitions of the inbound stream \(\{(?P<prefix>[^}]+):0\}:inbound\.\.\.\) on "
    r"(?P<url>\S+); concurrency 7; actions: echo, shout$",
    re.MULTILINE,
)


@pytest.mark.parametrize("how", ["script", "cli"])
def test_a_script_calling_run_logs_as_the_cli_does(how: str, key_prefix: str) -> None:
    """``python app.py`` with ``worker.run()`` logs what ``wsq-worker app:worker`` does: one
    start-up line with a timestamp and level, naming the Redis URL without its password, the
    concurrency and the actions."""
    password = "s3cret-pw"
    with RedisServer(password=password) as server:
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        environment = {"WSQ_REDIS_URL": url, "WSQ_KEY_PREFIX": key_prefix}
        if how == "script":
            process = ManagedProcess("worker", [sys.executable, "script_app.py"], env=environment, cwd=APPS)
        else:
            process = ManagedProcess.python_module(
                "worker", "wsq_worker", "script_app:worker", env=environment, cwd=APPS
            )
        with process:
            match = wait_until(
                lambda: STARTUP_LINE.search(process.output()), timeout=20, message="the start-up line"
            )
            assert process.stop() == 0
            output = process.output()  # empty once the process is closed
        assert match["prefix"] == key_prefix
        assert match["url"] == f"redis://***@127.0.0.1:{server.port}/0"
        assert password not in output
        assert re.search(r"INFO    wsq_worker\.worker: SIGTERM: stopping", output)


def test_run_leaves_an_application_s_logging_alone() -> None:
    """A script that configured logging keeps its own format: ``run()`` adds no handler."""
    script = (
        "import logging\n"
        "logging.basicConfig(level=logging.INFO, format='APP %(levelname)s %(message)s')\n"
        "from wsq_worker import Worker\n"
        "worker = Worker({}, redis_url='redis://127.0.0.1:1/0')\n"
        "worker.stop()  # the run stops at once\n"
        "worker.run()\n"
        "print(len(logging.getLogger().handlers))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["1"]
    assert re.fullmatch(r"APP INFO worker \S+ stopped", result.stderr.strip()), result.stderr
