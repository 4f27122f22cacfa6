"""Status events exactly once against a real nats-server: the write-ahead intent in the ledger
record, also after a crash that outlived the stream's duplicate window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from nats.js import api

from swe_fleet.dispatch.ledger import DispatchRecord, Ledger, PendingPublish
from swe_fleet.dispatch.status import StatusPublisher
from swe_fleet.events import AGENT_RESPONSES_SUBJECTS, CouncilJobStatus
from swe_fleet.local.stack import NatsServer
from swe_fleet.nats.connection import close_nats, connect_nats
from swe_fleet.nats.policy import PublishPolicy
from swe_fleet.nats.publisher import JetStreamPublisher

pytestmark = pytest.mark.integration

STREAM = "LEDGER_TEST"
#: Short enough to outwait in a test; the policy below keeps publishes inside it.
WINDOW_S = 1.0
POLICY = PublishPolicy(ack_timeout_s=0.5, max_attempts=2, budget_s=0.4)


@dataclass
class Setup:
    js: Any
    ledger: Ledger
    status: StatusPublisher
    publisher: JetStreamPublisher


@pytest.fixture
async def setup(nats_server: NatsServer) -> AsyncIterator[Setup]:
    """A ledger and its status publisher on a stream whose duplicate window is one second."""
    nc = await connect_nats(nats_server.url)
    js = nc.jetstream(timeout=5)
    await js.add_stream(
        api.StreamConfig(
            name=STREAM,
            subjects=list(AGENT_RESPONSES_SUBJECTS),
            storage=api.StorageType.FILE,
            duplicate_window=WINDOW_S,
        )
    )
    publisher = JetStreamPublisher(nc, STREAM, POLICY)
    ledger = await Ledger.open(js)
    try:
        yield Setup(js, ledger, StatusPublisher(ledger, publisher, js, STREAM), publisher)
    finally:
        await close_nats(nc)


async def _stored_keys(js: Any) -> list[str]:
    info = await js.stream_info(STREAM)
    keys = []
    for seq in range(1, info.state.last_seq + 1):
        msg = await js.get_msg(STREAM, seq=seq)
        keys.append(msg.headers["Nats-Msg-Id"])
    return keys


async def _submitted_record(ledger: Ledger, request_id: str) -> DispatchRecord:
    record, created = await ledger.reserve(request_id, f"dispatch-{request_id}", "c")
    assert created
    return await ledger.mark_submitted(record, f"dispatch-{request_id}", "http://dash")


async def test_publishing_a_state_twice_stores_it_once_and_survives_reloading(setup: Setup) -> None:
    """publish_once of the same state twice (also from a reloaded record) stores one event."""
    record = await _submitted_record(setup.ledger, "r1")
    record = await setup.status.publish_once(record, record.status_event("submitted"))
    record = await setup.status.publish_once(record, record.status_event("submitted"))
    reloaded = await setup.ledger.get("r1")
    assert reloaded is not None and reloaded.published == ("submitted",) and reloaded.pending is None
    await asyncio.sleep(WINDOW_S + 0.5)  # past the window: only the ledger prevents a second copy
    await setup.status.publish_once(reloaded, reloaded.status_event("submitted"))
    assert await _stored_keys(setup.js) == [record.status_event("submitted").key]


async def test_a_crash_after_publishing_does_not_publish_again_after_the_window(setup: Setup) -> None:
    """An intent whose event reached the stream (the crash came before the record was updated)
    is resolved by looking the key up, not by publishing again, even past the duplicate window;
    a plain republish past the window would have been stored twice."""
    record = await _submitted_record(setup.ledger, "r2")
    event = record.status_event("running")
    # What a dispatcher killed between publishing and recording leaves behind:
    after_seq = (await setup.js.stream_info(STREAM)).state.last_seq
    record = await setup.ledger.write_intent(record, _pending(event, after_seq))
    await setup.publisher.publish(event)
    control = CouncilJobStatus(**{**event.model_dump(), "job_id": "control"})
    await setup.publisher.publish(control)
    await asyncio.sleep(WINDOW_S + 0.5)

    restarted = await setup.ledger.get("r2")
    assert restarted is not None and restarted.pending is not None
    resolved = await setup.status.resolve_pending(restarted)
    resolved = await setup.status.publish_once(resolved, resolved.status_event("running"))
    await setup.publisher.publish(control)  # the control key, republished past the window

    assert resolved.published == ("running",) and resolved.pending is None
    assert await _stored_keys(setup.js) == [event.key, control.key, control.key]


async def test_a_crash_before_publishing_publishes_the_intent_once(setup: Setup) -> None:
    """An intent whose event never reached the stream is published from the record, byte for byte."""
    record = await _submitted_record(setup.ledger, "r3")
    event = record.status_event("succeeded", "done")
    after_seq = (await setup.js.stream_info(STREAM)).state.last_seq
    await setup.ledger.write_intent(record, _pending(event, after_seq))

    restarted = await setup.ledger.get("r3")
    assert restarted is not None
    resolved = await setup.status.resolve_pending(restarted)
    assert resolved.terminal and resolved.pending is None
    assert await _stored_keys(setup.js) == [event.key]
    stored = await setup.js.get_msg(STREAM, seq=1)
    assert stored.data == event.to_bytes()


def _pending(event: CouncilJobStatus, after_seq: int) -> PendingPublish:
    return PendingPublish(
        state=event.state,
        subject=event.subject,
        key=event.key,
        payload=event.to_bytes().decode(),
        after_seq=after_seq,
    )
