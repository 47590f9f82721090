"""Several gateways in one benchmark run: their node ids (distinct shards, on each master in
turn). Pure functions: no process started."""

from __future__ import annotations

import pytest

from bench.systems import KEY_PREFIX, _node_ids
from wsq_protocol.keys import Keys


def test_one_gateway_keeps_the_node_id_of_earlier_runs() -> None:
    assert _node_ids(1) == ["bench"]


def test_gateways_get_distinct_shards() -> None:
    keys = Keys(KEY_PREFIX)
    nodes = _node_ids(5)
    assert len({keys.shard_of(node) for node in nodes}) == 5


def test_gateways_go_to_each_master_in_turn() -> None:
    keys = Keys(KEY_PREFIX)

    def master_of(node: str) -> int:  # a made-up map: shard mod 3
        return keys.shard_of(node) % 3

    nodes = _node_ids(4, master_of, 3)
    assert [master_of(node) for node in nodes] == [0, 1, 2, 0]
    assert len({keys.shard_of(node) for node in nodes}) == 4


def test_more_gateways_than_shards_is_refused() -> None:
    with pytest.raises(ValueError, match="shards"):
        _node_ids(Keys(KEY_PREFIX).shards + 1)
