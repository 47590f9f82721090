"""The speed-ups change speed only. The pipe they name (``wsq_protocol.pipe``: hiredis packing,
``RedisPipe``, ``CommandTemplate``, ``BatchDeadline``) is tested in protocol/tests/test_pipe.py,
with hiredis and without; here, what is the SDK's own: uvloop, and a reply's template."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection

from wsq_protocol import pipe as pipe_module
from wsq_protocol.keys import keys_for
from wsq_worker import speedups
from wsq_worker.dispatch import _reply_template
from wsq_worker.publisher import Route, StreamWrite


def test_the_speedups_name_the_protocol_cores_pipe() -> None:
    assert speedups.RedisPipe is pipe_module.RedisPipe
    assert speedups.CommandTemplate is pipe_module.CommandTemplate
    assert speedups.BatchDeadline is pipe_module.BatchDeadline
    assert speedups.async_redis is pipe_module.async_redis


def test_run_uses_uvloop_when_installed() -> None:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    speedups.run(main())
    assert seen == ["uvloop"]


@pytest.mark.parametrize("frame", ['{"action":"echo","data":"ü","id":"1"}', ""])
def test_a_reply_is_packed_as_its_send_command(frame: str) -> None:
    connection_id = "gw-3f2a9c1d.q2uE4nK0m5Zr8VtY1xWb7A"
    template = _reply_template(keys_for("wsq"), "gw-3f2a9c1d")
    write = Route.connection(keys_for("wsq"), connection_id).send(frame)  # what a push to it writes
    assert isinstance(write, StreamWrite)
    assert template.stream == write.stream == keys_for("wsq").node_stream("gw-3f2a9c1d")
    packed = template.command.pack(connection_id.encode(), b"frame", frame.encode())
    assert packed == b"".join(Connection().pack_command(*write.command))
    assert b"$10\r\nNOMKSTREAM\r\n" in packed  # a reply never creates a gateway's stream
