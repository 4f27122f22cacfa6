"""cancel_and_wait: a task whose cancel was lost still ends; one that ignores every cancel is
handed back, not waited for forever."""

from __future__ import annotations

import asyncio
import types

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from swe_fleet._tasks import cancel_and_wait


async def _reader(sub: Subscription) -> None:
    """A pull loop's core: read messages until cancelled."""
    while True:
        await sub.next_msg(timeout=5)


async def _reader_cancelled_as_a_message_arrives() -> tuple[asyncio.Task[None], Subscription]:
    conn = types.SimpleNamespace(is_closed=False)
    sub = Subscription(conn, 1, "_INBOX.x")
    task = asyncio.create_task(_reader(sub))
    for _ in range(3):
        await asyncio.sleep(0)  # the reader waits in next_msg
    sub._pending_queue.put_nowait(Msg(conn, subject="_INBOX.x", data=b"408"))
    task.cancel()
    return task, sub


async def test_nats_py_next_msg_loses_a_cancel_that_arrives_with_a_message() -> None:
    """Why the helper exists (Python 3.11's wait_for under nats-py's next_msg): one cancel and
    the reader goes on reading. If this starts to fail, nats-py or Python no longer lose it."""
    task, _ = await _reader_cancelled_as_a_message_arrives()
    done, _ = await asyncio.wait([task], timeout=0.2)
    assert not done, "the cancel was not lost"
    assert await cancel_and_wait([task], timeout_s=2) == set()


async def test_a_task_whose_cancel_was_lost_is_stopped_by_cancel_and_wait() -> None:
    task, _ = await _reader_cancelled_as_a_message_arrives()
    assert await cancel_and_wait([task], timeout_s=2) == set()
    assert task.cancelled()


async def test_a_task_that_ignores_cancellation_is_returned_after_the_timeout() -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await cancel_and_wait([task], timeout_s=0.3) == {task}
    assert 0.3 <= loop.time() - began < 2
    release.set()
    task.cancel()
    await asyncio.wait([task], timeout=1)


async def test_tasks_that_already_ended_are_left_as_they_are() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fail())
    ok = asyncio.create_task(asyncio.sleep(0, result=7))
    await asyncio.wait([failed, ok])
    assert await cancel_and_wait([failed, ok]) == set()
    assert ok.result() == 7
    assert isinstance(failed.exception(), RuntimeError)
