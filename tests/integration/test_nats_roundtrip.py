"""Publisher and consumer against a real nats-server: keys deduplicate, consumers get each once."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from swe_fleet.errors import NatsUnreachable, StreamConfigMismatch
from swe_fleet.events import DeliberationCompleted, RankedAgent
from swe_fleet.local.stack import NatsServer, free_port
from swe_fleet.nats.consumer import ConsumerOptions, iter_events
from swe_fleet.nats.publisher import JetStreamPublisher, connect_nats, ensure_stream
from swe_fleet.spec import PublishSpec

from support.councils import propose_events

pytestmark = pytest.mark.integration


async def _collect(url: str, durable: str | None, **kw: object) -> list[object]:
    opts = ConsumerOptions(nats_url=url, durable=durable, idle_timeout_s=1.5, fetch_wait_s=0.3, **kw)  # type: ignore[arg-type]
    return [e async for e in iter_events(opts)]


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
    received = await _collect(nats_server.url, "dur-1")
    assert sorted(e.key for e in received) == sorted(e.key for e in events)  # type: ignore[attr-defined]


async def test_durable_consumer_resumes_after_acked_events(nats_server: NatsServer) -> None:
    """A durable consumer that read 10 events gets only the 5 new ones next time."""
    pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url))
    try:
        await pub.publish_all(propose_events("sub-a", 10))
        first = await _collect(nats_server.url, "dur-resume")
        await pub.publish_all(propose_events("sub-b", 5))
        second = await _collect(nats_server.url, "dur-resume")
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
    got = await _collect(nats_server.url, None, submission_id="mine")
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
    got = await _collect(nats_server.url, "dur-dead")
    assert [e.submission_id for e in got] == ["after"]  # type: ignore[attr-defined]
    dead = await js.get_last_msg("AGENT_RESPONSES", "council.dead")
    await nc.close()
    assert b"not JSON" in dead.data and b"not json at all" in dead.data


async def test_existing_stream_without_our_subjects_is_reported_not_changed(
    nats_server: NatsServer,
) -> None:
    """A stream of the same name with other subjects raises StreamConfigMismatch and stays as it was."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="AGENT_RESPONSES", subjects=["other.>"])
    with pytest.raises(StreamConfigMismatch, match="left unchanged"):
        await ensure_stream(js, "AGENT_RESPONSES")
    info = await js.stream_info("AGENT_RESPONSES")
    await nc.close()
    assert info.config.subjects == ["other.>"]


async def test_unreachable_nats_fails_fast_naming_the_url() -> None:
    """Nobody listening: NatsUnreachable within the bound, naming the URL."""
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(NatsUnreachable, match=url.replace(".", r"\.")):
        await connect_nats(url, timeout_s=3)
    assert time.monotonic() - started < 10


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
    got = await _collect(nats_server.url, "dur-restart")
    keys = [e.key for e in got]  # type: ignore[attr-defined]
    assert len(keys) == len(set(keys)) == 200
