"""The publisher's own bookkeeping, against a stand-in JetStream context (the fault tests use a real
server; these pin exact attempt counts and exactly which events reach the outbox)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.js import api

from swe_fleet.errors import OutboxWritten, PublishError
from swe_fleet.nats.outbox import read_outbox
from swe_fleet.nats.policy import PublishPolicy
from swe_fleet.nats.publisher import JetStreamPublisher

from support.councils import propose_events

FAST = PublishPolicy(ack_timeout_s=1, max_attempts=3, budget_s=5, initial_wait_s=0.001, max_wait_s=0.002)


class _StandInJetStream:
    """Answers PubAcks in order; raises ``failures[key]`` errors for a key first (one per call)."""

    def __init__(self, failures: dict[str, list[BaseException]] | None = None, stream: str = "S") -> None:
        self.failures = failures or {}
        self.calls: list[str] = []
        self.stream = stream

    async def publish(self, subject: str, payload: bytes, **kw: Any) -> api.PubAck:
        key = kw["headers"]["Nats-Msg-Id"]
        self.calls.append(key)
        pending = self.failures.get(key)
        if pending:
            raise pending.pop(0)
        return api.PubAck(stream=self.stream, seq=len(self.calls))


class _StandInConnection:
    is_closed = False
    is_connected = True

    def __init__(self, js: _StandInJetStream) -> None:
        self.js = js

    def jetstream(self, timeout: float) -> _StandInJetStream:
        return self.js

    async def drain(self) -> None:
        return None


def _publisher(js: _StandInJetStream, outbox: Path | None = None) -> JetStreamPublisher:
    return JetStreamPublisher(_StandInConnection(js), "S", FAST, outbox=outbox)


async def test_first_attempt_counts_toward_max_attempts() -> None:
    """Two timeouts then success: three calls in all; three timeouts: PublishError after 3 attempts."""
    [e] = propose_events("s", 1)
    js = _StandInJetStream({e.key: [nats.errors.TimeoutError(), nats.errors.TimeoutError()]})
    result = await _publisher(js).publish(e)
    assert len(js.calls) == 3 and result.seq == 3 and not result.duplicate

    js = _StandInJetStream({e.key: [nats.errors.TimeoutError() for _ in range(5)]})
    with pytest.raises(PublishError, match="after 3 attempts") as info:
        await _publisher(js).publish(e)
    assert len(js.calls) == 3
    assert info.value.key == e.key and isinstance(info.value.__cause__, nats.errors.TimeoutError)


async def test_non_transient_error_fails_on_the_first_attempt() -> None:
    """A bad subject is raised as PublishError after exactly one call."""
    [e] = propose_events("s", 1)
    js = _StandInJetStream({e.key: [nats.errors.BadSubjectError()]})
    with pytest.raises(PublishError, match="BadSubjectError"):
        await _publisher(js).publish(e)
    assert len(js.calls) == 1


async def test_pub_ack_from_another_stream_is_an_error() -> None:
    """A PubAck naming a different stream is refused, both streams named."""
    with pytest.raises(PublishError, match="'OTHER', not 'S'"):
        await _publisher(_StandInJetStream(stream="OTHER")).publish(propose_events("s", 1)[0])


async def test_failed_publish_all_spools_exactly_the_unacknowledged_events(tmp_path: Path) -> None:
    """Event 3 of 6 exhausts its retries: events 3-5 (failed + never started) go to the outbox, 0-2 do not."""
    events = propose_events("s", 6)
    js = _StandInJetStream({events[3].key: [nats.errors.TimeoutError() for _ in range(3)]})
    outbox = tmp_path / "o.jsonl"
    with pytest.raises(OutboxWritten) as info:
        await _publisher(js, outbox).publish_all(events, concurrency=1)
    assert info.value.path == outbox and info.value.count == 3
    assert info.value.key == events[3].key and str(outbox) in str(info.value)
    assert [e.key for e in read_outbox(outbox)] == [e.key for e in events[3:]]
    assert [e.payload for e in read_outbox(outbox)] == [e.to_bytes() for e in events[3:]]
    assert events[4].key not in js.calls  # nothing new starts after a failure


async def test_closed_publisher_refuses_to_publish() -> None:
    """After close(), publish raises PublishError instead of reconnecting."""
    pub = _publisher(_StandInJetStream())
    await pub.close()
    with pytest.raises(PublishError, match="closed"):
        await pub.publish(propose_events("s", 1)[0])
