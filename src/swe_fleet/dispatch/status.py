"""Job status events published exactly once per job and state, whatever crashes and however late
a restart comes: the write-ahead intent.

Why not just the ``Nats-Msg-Id``: JetStream drops a re-published id only within the stream's
duplicate window (10 minutes by default). A dispatcher that restarts after a longer outage, or a
job that runs for hours, would otherwise publish ``council.job.running`` again for a job it already
announced. So publishing one state goes through the request's ledger record
(:mod:`~swe_fleet.dispatch.ledger`):

1. write ``pending = {state, key, payload, after_seq}`` to the record, where ``after_seq`` is the
   events stream's last sequence *before* the publish (compare-and-set on the record's revision);
2. publish the event with its key as ``Nats-Msg-Id``;
3. write ``published += [state]``, ``pending = None``.

A crash between 1 and 3 leaves the intent. Whoever touches the record next (the restarted
dispatcher on start-up, or the next publish) looks the key up in the stream from ``after_seq``
on (``next_by_subj`` reads, only that subject, only since the intent): found, it is marked
published; not found, the payload of the intent is published. Either way the stream holds the
event once, however long the crash lasted. Within the window the Nats-Msg-Id makes even a blind
republish harmless; the look-up makes it unnecessary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import nats.js.errors
import structlog

from swe_fleet.dispatch.ledger import DispatchRecord, Ledger, PendingPublish
from swe_fleet.events import CouncilJobStatus
from swe_fleet.nats.publisher import JetStreamPublisher

log = structlog.get_logger(__name__)

T = TypeVar("T")


class StatusPublisher:
    """Publishes status events through the ledger's write-ahead intent (see the module docstring).

    Args:
        publisher: publishes to ``events_stream``.
        js: reads ``events_stream`` (its last sequence, and the look-up of an intent's key).
        timeout_s: bound of each stream read.
    """

    def __init__(
        self,
        ledger: Ledger,
        publisher: JetStreamPublisher,
        js: Any,
        events_stream: str,
        timeout_s: float = 10.0,
    ) -> None:
        self._ledger = ledger
        self._publisher = publisher
        self._js = js
        self._events_stream = events_stream
        self._timeout_s = timeout_s

    async def _bounded(self, what: Awaitable[T]) -> T:
        return await asyncio.wait_for(what, self._timeout_s)

    async def publish_once(self, record: DispatchRecord, event: CouncilJobStatus) -> DispatchRecord:
        """Publish ``event`` unless the record says its state was published; return the record.

        Raises:
            PublishError: the publish failed after its retries (the intent stays; the next
                call resolves it).
            DispatchError: the record changed concurrently.
        """
        if record.pending is not None:
            record = await self.resolve_pending(record)
        if event.state in record.published:
            return record
        after_seq = await self._last_seq()
        record = await self._ledger.write_intent(
            record,
            PendingPublish(
                state=event.state,
                subject=event.subject,
                key=event.key,
                payload=event.to_bytes().decode(),
                after_seq=after_seq,
            ),
        )
        result = await self._publisher.publish(event)
        log.info(
            "dispatch.status_published",
            request_id=record.request_id,
            state=event.state,
            key=event.key,
            seq=result.seq,
            duplicate=result.duplicate,
        )
        return await self._ledger.mark_published(record, event.state)

    async def resolve_pending(self, record: DispatchRecord) -> DispatchRecord:
        """Finish the intent a crash left: publish it only if the stream does not hold its key."""
        pending = record.pending
        if pending is None:
            return record
        if await self.stream_holds(pending.subject, pending.key, pending.after_seq):
            log.info("dispatch.intent_found", request_id=record.request_id, key=pending.key)
        else:
            result = await self._publisher.publish(_Stored(pending))
            log.info(
                "dispatch.intent_published",
                request_id=record.request_id,
                key=pending.key,
                duplicate=result.duplicate,
            )
        return await self._ledger.mark_published(record, pending.state)

    async def resolve_left_over(self, records: Iterable[DispatchRecord]) -> None:
        """Resolve the intent of every record that has one (a dispatcher's start-up)."""
        for record in records:
            if record.pending is not None:
                await self.resolve_pending(record)

    async def stream_holds(self, subject: str, key: str, after_seq: int) -> bool:
        """Whether the events stream has a message on ``subject`` with ``Nats-Msg-Id`` ``key``
        after ``after_seq`` (reads only that subject's messages since then)."""
        seq = after_seq + 1
        while True:
            try:
                msg = await self._bounded(
                    self._js.get_msg(self._events_stream, seq=seq, subject=subject, next=True)
                )
            except nats.js.errors.NotFoundError:
                return False
            if (msg.headers or {}).get("Nats-Msg-Id") == key:
                return True
            seq = msg.seq + 1

    async def _last_seq(self) -> int:
        info = await self._bounded(self._js.stream_info(self._events_stream))
        return int(info.state.last_seq)


class _Stored:
    """A pending intent as something the publisher can send again, byte for byte."""

    def __init__(self, pending: PendingPublish) -> None:
        self._pending = pending

    @property
    def subject(self) -> str:
        return self._pending.subject

    @property
    def key(self) -> str:
        return self._pending.key

    def to_bytes(self) -> bytes:
        return self._pending.payload.encode()
