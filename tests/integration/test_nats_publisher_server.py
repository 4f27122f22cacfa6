"""The publisher against a real nats-server: keys deduplicate, and a server restarted (or
SIGKILLed) under it, or a connection closed for good, costs no event and stores none twice."""

from __future__ import annotations

import asyncio

import pytest

from swe_fleet.local.stack import NatsServer
from swe_fleet.nats.publisher import JetStreamPublisher
from swe_fleet.spec import PublishSpec

from support.councils import propose_events
from support.jetstream import collect_events, restart, sigkill, stream_contents, until

pytestmark = pytest.mark.integration


async def test_republishing_the_same_keys_stores_each_event_once(nats_server: NatsServer) -> None:
    """Publishing 50 events twice leaves 50 messages; the second round is acked as duplicates."""
    pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url))
    try:
        events = propose_events("sub-dup", 50)
        first = await pub.publish_all(events)
        second = await pub.publish_all(events)
    finally:
        await pub.close()
    assert not any(r.duplicate for r in first)
    assert all(r.duplicate for r in second)
    received = await collect_events(nats_server.url, "dur-1")
    assert sorted(e.key for e in received) == sorted(e.key for e in events)  # type: ignore[attr-defined]


async def test_publisher_rides_out_a_nats_restart(tmp_path: object, nats_server: NatsServer) -> None:
    """nats-server restarted on the same store and port mid-stream: every event stored exactly once."""
    pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url, retry_budget_s=30))
    events = propose_events("restart", 200)
    port, store = nats_server.port, nats_server.workdir / "jetstream"

    async def bounce() -> None:
        await asyncio.sleep(0.05)
        nats_server.stop()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(nats_server.start, port, store)

    try:
        await asyncio.gather(pub.publish_all(events, concurrency=8), bounce())
    finally:
        await pub.close()
    got = await collect_events(nats_server.url, "dur-restart")
    keys = [e.key for e in got]  # type: ignore[attr-defined]
    assert len(keys) == len(set(keys)) == 200


async def test_sigkill_mid_publish_then_restart_stores_every_event_exactly_once(
    nats_server: NatsServer,
) -> None:
    """SIGKILL after ~150 of 500 acks, restart on the same store and port: 500 messages, 500 distinct keys."""
    port, store = nats_server.port, nats_server.workdir / "jetstream"
    pub = await JetStreamPublisher.connect(
        PublishSpec(nats_url=nats_server.url, retry_budget_s=30, ack_timeout_s=2)
    )
    events = propose_events("kill-mid-publish", 500)
    acked_at_kill: list[int] = []

    async def kill_and_restart() -> None:
        await until(lambda: pub.published >= 150)
        await sigkill(nats_server)
        acked_at_kill.append(pub.published)
        await asyncio.sleep(1.0)
        await restart(nats_server, port, store)

    try:
        results, _ = await asyncio.gather(pub.publish_all(events, concurrency=32), kill_and_restart())
    finally:
        await pub.close()
    assert 150 <= acked_at_kill[0] < 500  # killed mid-publish
    assert [r.key for r in results] == [e.key for e in events]
    messages, keys = await stream_contents(nats_server.url)
    assert messages == 500
    assert len(keys) == len(set(keys)) == 500 and set(keys) == {e.key for e in events}


async def test_a_connection_closed_for_good_is_reopened_by_the_next_publish(nats_server: NatsServer) -> None:
    """Once the client gave up reconnecting, the next publish opens a new connection and succeeds."""
    pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url))
    try:
        await pub._nc.close()  # what the client does after max_reconnect_attempts
        [result] = await pub.publish_all(propose_events("reopen", 1))
    finally:
        await pub.close()
    assert result.seq == 1 and not result.duplicate
