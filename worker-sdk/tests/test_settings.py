"""The SDK's settings object, read from a given environment (no Redis)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wsq_worker.settings import (
    ConnectionSettings,
    WorkerSettings,
    connection_from_env,
    describe_settings,
    variable_of,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults() -> None:
    assert WorkerSettings.from_env({}) == WorkerSettings(
        redis_url="redis://localhost:6379/0",
        key_prefix="wsq",
        shards=16,
        claim_idle_ms=15_000,
        max_attempts=3,
        max_dead_letters=10_000,
    )


def test_every_setting_comes_from_its_variable() -> None:
    environ = {
        "WSQ_REDIS_URL": "redis://redis:6380/1",
        "WSQ_KEY_PREFIX": "chat",
        "WSQ_SHARDS": "4",
        "WSQ_CLAIM_IDLE_MS": "2500",
        "WSQ_MAX_ATTEMPTS": "5",
        "WSQ_MAX_DEAD_LETTERS": "0",
    }
    assert WorkerSettings.from_env(environ) == WorkerSettings(
        redis_url="redis://redis:6380/1",
        key_prefix="chat",
        shards=4,
        claim_idle_ms=2500,
        max_attempts=5,
        max_dead_letters=0,
    )


def test_an_empty_variable_means_the_default() -> None:
    environ = dict.fromkeys(("WSQ_REDIS_URL", "WSQ_KEY_PREFIX", "WSQ_MAX_ATTEMPTS"), "")
    assert WorkerSettings.from_env(environ) == WorkerSettings()


@pytest.mark.parametrize(
    "variable", ["WSQ_SHARDS", "WSQ_CLAIM_IDLE_MS", "WSQ_MAX_ATTEMPTS", "WSQ_MAX_DEAD_LETTERS"]
)
def test_a_number_that_is_not_a_whole_one_is_refused_naming_its_variable(variable: str) -> None:
    with pytest.raises(ValueError, match=f"^{variable} must be a whole number, not '2.5'$"):
        WorkerSettings.from_env({variable: "2.5"})


def test_given_values_win_and_their_variables_are_not_read() -> None:
    environ = {"WSQ_MAX_ATTEMPTS": "three", "WSQ_KEY_PREFIX": "env", "WSQ_CLAIM_IDLE_MS": "7"}
    settings = WorkerSettings.from_env(environ, max_attempts=1, key_prefix="given")
    assert (settings.max_attempts, settings.key_prefix, settings.claim_idle_ms) == (1, "given", 7)


def test_settings_are_frozen() -> None:
    settings = WorkerSettings()
    with pytest.raises(AttributeError):
        settings.max_attempts = 5  # type: ignore[misc]


def test_a_publisher_reads_redis_the_prefix_and_the_shards_only() -> None:
    """A malformed worker setting is no concern of a publisher's."""
    environ = {"WSQ_REDIS_URL": "redis://redis:6379/0", "WSQ_MAX_ATTEMPTS": "three", "WSQ_SHARDS": "8"}
    assert connection_from_env(environ) == ConnectionSettings("redis://redis:6379/0", "wsq", 8)
    assert connection_from_env({}) == ("redis://localhost:6379/0", "wsq", 16, False)
    assert connection_from_env({"WSQ_REDIS_CLUSTER": "true"}).redis_cluster is True


def test_a_publisher_is_given_values_over_the_environment() -> None:
    environ = {"WSQ_KEY_PREFIX": "env", "WSQ_SHARDS": "not read"}
    assert connection_from_env(environ, key_prefix="given", shards=2, redis_cluster=True) == (
        "redis://localhost:6379/0",
        "given",
        2,
        True,
    )
    with pytest.raises(ValueError, match="from 1 to 1024"):
        connection_from_env({}, shards=0)


@pytest.mark.parametrize("shards", ["0", "1025", "x"])
def test_a_publisher_refuses_shards_out_of_range_naming_the_variable(shards: str) -> None:
    with pytest.raises(ValueError, match=f"^WSQ_SHARDS must be a number from 1 to 1024, not '{shards}'$"):
        connection_from_env({"WSQ_SHARDS": shards})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("Yes", True), ("on", True), ("0", False), ("off", False)],
)
def test_redis_cluster_reads_yes_or_no_as_the_gateway_does(text: str, expected: bool) -> None:
    assert WorkerSettings.from_env({"WSQ_REDIS_CLUSTER": text}).redis_cluster is expected
    assert connection_from_env({"WSQ_REDIS_CLUSTER": text}).redis_cluster is expected


def test_redis_cluster_refuses_anything_else_naming_the_variable() -> None:
    with pytest.raises(ValueError, match=r"^WSQ_REDIS_CLUSTER must be 1, true, yes or on"):
        WorkerSettings.from_env({"WSQ_REDIS_CLUSTER": "cluster"})


def test_every_field_is_documented() -> None:
    rows = describe_settings()
    assert [variable for variable, _, _ in rows] == [
        variable_of(name)
        for name in (
            "redis_url",
            "redis_cluster",
            "key_prefix",
            "shards",
            "claim_idle_ms",
            "max_attempts",
            "max_dead_letters",
            "metrics_port",
        )
    ]
    for variable, _, description in rows:
        assert variable.startswith("WSQ_")
        assert description.endswith("."), variable


def test_readme_environment_table_matches_the_settings() -> None:
    rows = re.findall(r"^\| `(WSQ_[A-Z_]+)` \| `(.+?)` \| (.+?) \|$", README.read_text(), re.MULTILINE)
    assert rows == describe_settings()
