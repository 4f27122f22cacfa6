"""The consumer against a real nats-server: durable resume, typed and filtered events, dead
letters, and nothing lost when the consumer dies, the server is SIGKILLed, or the durable is
deleted under it."""

from __future__ import annotations

import asyncio

import nats
import pytest

from swe_fleet.events import DeliberationCompleted, RankedAgent
from swe_fleet.local.stack import NatsServer
from swe_fleet.nats.consumer import ConsumerOptions, Event, iter_events
from swe_fleet.nats.publisher import JetStreamPublisher
from swe_fleet.nats.streams import ensure_stream
from swe_fleet.spec import PublishSpec

from support.councils import propose_events
from support.jetstream import collect_events, restart, sigkill, until

STREAM = "AGENT_RESPONSES"

pytestmark = pytest.mark.integration


async def _no_reader_waiting(url: str, durable: str, timeout_s: float = 10) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        async with asyncio.timeout(timeout_s):
            while True:
                info = await js.consumer_info(STREAM, durable)
                if not (info.num_waiting or info.num_ack_pending):
                    return
                await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def test_durable_consumer_resumes_after_acked_events(nats_server: NatsServer) -> None:
    """A durable consumer that read 10 events gets only the 5 new ones next time."""
    pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url))
    try:
        await pub.publish_all(propose_events("sub-a", 10))
        first = await collect_events(nats_server.url, "dur-resume")
        # The first reader's last pull request may still be open on the server for a moment
        # after it stopped: a message published then goes to it and comes back only after the
        # ack wait (30 s). What this test is about starts once the durable has no reader.
        await _no_reader_waiting(nats_server.url, "dur-resume")
        await pub.publish_all(propose_events("sub-b", 5))
        second = await collect_events(nats_server.url, "dur-resume")
    finally:
        await pub.close()
    assert len(first) == 10
    assert [e.submission_id for e in second] == ["sub-b"] * 5  # type: ignore[attr-defined]


async def test_consumer_filters_by_submission_and_types_events(nats_server: NatsServer) -> None:
    """Events come back typed; a submission filter skips other submissions."""
    pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url))
    result = DeliberationCompleted(
        submission_id="mine",
        council="c",
        task_id="t0",
        outcome="decided",
        winner="a",
        ranking=[RankedAgent(agent_id="a", rank=1, mean_score=5, votes=1)],
        scores={},
        votes_counted=1,
        votes_expected=1,
    )
    try:
        await pub.publish_all([*propose_events("mine", 2), *propose_events("other", 3), result])
    finally:
        await pub.close()
    got = await collect_events(nats_server.url, None, submission_id="mine")
    assert [type(e).__name__ for e in got] == ["AgentResponseCompleted"] * 2 + ["DeliberationCompleted"]


async def test_undecodable_message_goes_to_dead_letter_and_stream_moves_on(
    nats_server: NatsServer,
) -> None:
    """Garbage on a council subject lands on council.dead with its reason; later events still arrive."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_stream(js, "AGENT_RESPONSES")
    await js.publish("agent.response.completed", b"not json at all")
    pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url))
    await pub.publish_all(propose_events("after", 1))
    await pub.close()
    got = await collect_events(nats_server.url, "dur-dead")
    assert [e.submission_id for e in got] == ["after"]  # type: ignore[attr-defined]
    dead = await js.get_last_msg("AGENT_RESPONSES", "council.dead")
    await nc.close()
    assert b"not JSON" in dead.data and b"not json at all" in dead.data


async def test_consumer_killed_mid_stream_loses_nothing(nats_server: NatsServer) -> None:
    """Consumer killed at event 30 of 100, restarted on its durable: all keys seen, only unacked again."""
    pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url))
    events = propose_events("consumer-killed", 100)
    try:
        await pub.publish_all(events)
    finally:
        await pub.close()
    opts = ConsumerOptions(
        nats_url=nats_server.url,
        durable="killed",
        ack_wait_s=1,
        max_deliver=4,
        fetch_batch=16,
        fetch_wait_s=0.3,
    )
    first: list[Event] = []
    thirty = asyncio.Event()

    async def consume_until_killed() -> None:
        async for e in iter_events(opts):
            first.append(e)
            if len(first) == 30:
                thirty.set()
                await asyncio.sleep(3600)  # "working" on the 30th when it dies

    task = asyncio.create_task(consume_until_killed())
    await asyncio.wait_for(thirty.wait(), 20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    restarted = ConsumerOptions(**{**opts.__dict__, "idle_timeout_s": 2.5})
    second = [e async for e in iter_events(restarted)]
    first_keys, second_keys = [e.key for e in first], [e.key for e in second]
    assert set(first_keys) | set(second_keys) == {e.key for e in events}
    assert first_keys[-1] in second_keys  # held unacked when killed: redelivered
    assert not set(first_keys[:29]) & set(second_keys)  # acked: not redelivered
    assert len(second_keys) == len(set(second_keys)) == 71


async def test_consumer_iterates_on_across_a_nats_sigkill_and_restart(nats_server: NatsServer) -> None:
    """A durable iter_events keeps going across SIGKILL + restart of nats-server: all 200 keys arrive."""
    port, store = nats_server.port, nats_server.workdir / "jetstream"
    spec = PublishSpec(nats_url=nats_server.url, retry_budget_s=20)
    pub = await JetStreamPublisher.connect(spec)
    try:
        await pub.publish_all(propose_events("across", 100))
    finally:
        await pub.close()
    seen: list[str] = []
    opts = ConsumerOptions(nats_url=nats_server.url, durable="across", idle_timeout_s=4, fetch_wait_s=0.5)

    async def consume() -> None:
        async for e in iter_events(opts):
            seen.append(e.key)

    task = asyncio.create_task(consume())
    await until(lambda: len(seen) >= 100)
    await sigkill(nats_server)
    await asyncio.sleep(2.0)  # longer than a fetch wait: the iterator sees the outage
    assert not task.done()
    await restart(nats_server, port, store)
    pub = await JetStreamPublisher.connect(spec)
    try:
        await pub.publish_all(propose_events("across", 100, start=100))
    finally:
        await pub.close()
    await asyncio.wait_for(task, 40)
    assert set(seen) == {e.key for e in propose_events("across", 200)}


async def test_consumer_deleted_under_the_iterator_is_created_again(nats_server: NatsServer) -> None:
    """The durable deleted mid-stream (an operator, an expiry): the iterator binds anew and misses nothing."""
    spec = PublishSpec(nats_url=nats_server.url)
    pub = await JetStreamPublisher.connect(spec)
    try:
        await pub.publish_all(propose_events("gone", 20))
        seen: list[str] = []
        opts = ConsumerOptions(nats_url=nats_server.url, durable="gone", idle_timeout_s=3, fetch_wait_s=0.3)

        async def consume() -> None:
            async for e in iter_events(opts):
                seen.append(e.key)

        task = asyncio.create_task(consume())
        await until(lambda: len(seen) >= 20)
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().delete_consumer(STREAM, "gone")
        finally:
            await nc.close()
        await pub.publish_all(propose_events("gone", 20, start=20))
        await asyncio.wait_for(task, 30)
    finally:
        await pub.close()
    assert set(seen) == {e.key for e in propose_events("gone", 40)}
