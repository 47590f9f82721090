"""The background-loop machinery both packages share (no Redis needed)."""

from __future__ import annotations

import asyncio

from wsq_protocol.batching import cancel_and_wait


async def test_cancel_and_wait_ends_a_loop_that_swallowed_its_cancellation() -> None:
    """A loop whose cancellation a library below it caught (and retried the command) runs on
    after one ``cancel()``: a shutdown awaiting it would hang. Cancelled again, it ends."""
    swallowed = 0
    in_call = asyncio.Event()

    async def library_call() -> None:
        nonlocal swallowed
        in_call.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed += 1  # caught and "retried": the caller never sees it

    async def loop() -> None:
        while True:
            if swallowed == 0:
                await library_call()
            await asyncio.sleep(0.01)  # the loop's own period

    task = asyncio.create_task(loop())
    await in_call.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done, "one cancel() was swallowed: the loop runs on"
    await asyncio.wait_for(cancel_and_wait([task], again_every_s=0.05), timeout=5)
    assert task.cancelled()
    assert swallowed == 1


async def test_cancel_and_wait_of_finished_tasks_returns_at_once() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await asyncio.wait_for(cancel_and_wait([task]), timeout=1)
    assert task.done()
    assert not task.cancelled()
