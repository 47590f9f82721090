"""The gateway's side of the Redis pipe (``wsq_protocol.pipe``, tested in protocol/tests/
test_pipe.py): the batcher refuses a write Redis can't take in its caller, and aiohttp's close
codes are refused as wsq's own are."""

from __future__ import annotations

import pytest
from aiohttp import WSCloseCode

from wsq_gateway.broker.batcher import RedisBatcher, Write
from wsq_protocol.codes import CloseCode
from wsq_protocol.pipe import RedisPipe
from wsq_protocol.pipe import async_redis as redis_client


def test_an_aiohttp_close_code_is_refused_as_wsqs_own_are() -> None:
    """An IntEnum: redis-py's packer would send "<WSCloseCode.ABNORMAL_CLOSURE: 1006>"."""
    pipe = RedisPipe(redis_client("redis://127.0.0.1:1/0"))
    with pytest.raises(TypeError, match=r"'XADD': argument 4 is a WSCloseCode \("):
        pipe.pack(("XADD", "s", "*", "close_code", WSCloseCode.ABNORMAL_CLOSURE))


async def test_the_batcher_refuses_a_bad_write_in_its_caller_and_goes_on(
    redis_url: str, key_prefix: str
) -> None:
    client = redis_client(redis_url)
    batcher = RedisBatcher(client, sequence_key=f"{key_prefix}:node:gw-t:seq")
    batcher.start()
    try:
        with pytest.raises(TypeError, match="argument 2 is a CloseCode"):
            batcher.submit(Write([("SET", f"{key_prefix}:bad", CloseCode.SERVICE_RESTART)], durable=True))
        assert await batcher.submit_and_wait(("SET", f"{key_prefix}:good", 1012)) == [b"OK"]
        assert await client.get(f"{key_prefix}:good") == b"1012"
        assert await client.exists(f"{key_prefix}:bad") == 0
    finally:
        await batcher.close(5.0)
        await client.aclose()
