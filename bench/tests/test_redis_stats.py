"""The Redis counters of the roundtrip (``bench.redis_stats``) and how the report shows them:
parsing ``INFO`` text, the per-message deltas and shares per master, the ratios of the cluster
systems. Pure functions on made-up samples: no server, no timing."""

from __future__ import annotations

from typing import Any

import pytest

from bench.redis_stats import (
    CommandStat,
    RedisSample,
    load_per_message,
    parse_commandstats,
    parse_info,
    render_load,
    sample_from_info,
)
from bench.report import render, summarize

INFO_TEXT = """\
# CPU\r
used_cpu_sys:1.250000\r
used_cpu_user:2.500000\r
used_cpu_sys_children:0.000000\r
\r
# Commandstats\r
cmdstat_xadd:calls=100,usec=300,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r
cmdstat_evalsha:calls=10,usec=250,usec_per_call=25.00,rejected_calls=0,failed_calls=1\r
cmdstat_cluster|slots:calls=2,usec=40,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r
cmdstat_info:calls=7,usec=70,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r
"""


def test_info_text_is_parsed() -> None:
    fields = parse_info(INFO_TEXT)
    assert fields["used_cpu_sys"] == "1.250000"
    assert "# CPU" not in fields
    stats = parse_commandstats(fields)
    assert stats["xadd"] == CommandStat(100, 300)
    assert stats["cluster|slots"] == CommandStat(2, 40)  # a subcommand keeps its name
    assert set(stats) == {"xadd", "evalsha", "cluster|slots", "info"}
    sample = sample_from_info("127.0.0.1:7000", INFO_TEXT)
    assert sample.cpu_s == pytest.approx(3.75)
    assert sample.commands["evalsha"] == CommandStat(10, 250)


def master(name: str, cpu_s: float, **commands: tuple[int, int]) -> RedisSample:
    return RedisSample(name, cpu_s, {command: CommandStat(*stat) for command, stat in commands.items()})


def test_load_per_message_splits_calls_and_cpu_by_master() -> None:
    before = [
        master("a:1", 1.0, xadd=(100, 1000), info=(5, 50)),
        master("b:2", 2.0, xadd=(0, 0)),
    ]
    after = [
        # 300 more XADDs and 100 EVALSHAs (a new command), 0.02 s more CPU; INFO is ours.
        master("a:1", 1.02, xadd=(400, 2500), evalsha=(100, 1500), info=(9, 90)),
        master("b:2", 2.01, xadd=(100, 500)),
    ]
    load = load_per_message(before, after, messages=1000)
    first, second = load["masters"]
    assert first["server"] == "a:1"
    assert first["calls"] == 400
    assert first["calls_share"] == 0.8
    assert second["calls_share"] == 0.2
    assert first["cpu_us_per_message"] == pytest.approx(20.0)
    assert second["cpu_us_per_message"] == pytest.approx(10.0)
    assert first["commands_us_per_message"] == pytest.approx(3.0)  # (1500 + 1500) µs / 1000
    assert first["top_calls_per_message"] == {"xadd": 0.3, "evalsha": 0.1}
    assert load["cpu_us_per_message"] == pytest.approx(30.0)
    assert load["calls_per_message"] == 0.5
    assert load["messages"] == 1000


def test_load_per_message_refuses_samples_of_other_servers() -> None:
    with pytest.raises(ValueError, match="do not match"):
        load_per_message([master("a:1", 0)], [master("b:2", 0)], 10)


def test_load_without_messages_or_calls_has_no_share() -> None:
    load = load_per_message([master("a:1", 1.0)], [master("a:1", 1.0)], 0)
    assert load["masters"][0]["calls_share"] is None
    assert load["calls_per_message"] == 0
    assert "calls       -" in render_load("wsq", load)[1]


def roundtrip_row(rate: float, load: dict[str, Any] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "clients": 50,
        "inflight": 4,
        "messages_per_s": rate,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "cpu_percent": {"server": 50.0},
    }
    return row | ({"redis": load} if load else {})


def test_report_shows_each_master_and_the_cluster_ratios() -> None:
    one = load_per_message([master("a:1", 1.0)], [master("a:1", 1.01, xadd=(50, 100))], 1000)
    three = load_per_message(
        [master("a:1", 1.0), master("b:2", 1.0), master("c:3", 1.0)],
        [master("a:1", 1.01, xadd=(20, 10)), master("b:2", 1.0, xadd=(20, 10)), master("c:3", 1.0)],
        1000,
    )
    results = {
        name: {"high": roundtrip_row(rate, load), "light": roundtrip_row(rate / 4, load)}
        for name, rate, load in (
            ("wsq", 20_000.0, one),
            ("wsq-cluster1", 18_000.0, one),
            ("wsq-cluster3", 16_000.0, three),
            ("bare", 40_000.0, None),
        )
    }
    summary = summarize("roundtrip", results)
    assert summary["ratios"]["high: wsq/bare msg/s"] == 0.5
    assert summary["ratios"]["high: wsq-cluster1/bare msg/s"] == 0.45
    assert summary["ratios"]["high: wsq-cluster3/wsq msg/s"] == 0.8
    text = render({"workload": "roundtrip", "systems": results, "summary": summary})
    assert "wsq-cluster3: Redis per message, 3 server(s)" in text
    assert "50.0 %" in text  # a:1 and b:2 each had half the calls
    assert "c:3" in text
