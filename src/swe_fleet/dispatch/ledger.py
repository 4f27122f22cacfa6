"""The dispatcher's ledger: one JetStream key-value record per request, and status events
published exactly once per job and state.

Why a ledger: JetStream drops a re-published ``Nats-Msg-Id`` only within the stream's duplicate
window (10 minutes by default). A dispatcher that restarts after a longer outage, or a job that
runs for hours, would otherwise publish ``council.job.running`` again for a job it already
announced. So the ledger (bucket ``COUNCIL_DISPATCH``, one record per request id) remembers which
states were published, durably, and publishing one goes through a write-ahead intent:

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

The record is also the request's reservation of an in-flight slot (written before the job is
submitted), so a restarted dispatcher counts jobs whose submission it did not get to finish.
Terminal records are kept for :data:`RETENTION_S` (a request redelivered after its job ended
must still find that its events were published), then deleted on start-up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.js import api
from pydantic import BaseModel, ConfigDict, Field

from swe_fleet.errors import DispatchError
from swe_fleet.events import TERMINAL_JOB_STATES, CouncilJobStatus, JobState
from swe_fleet.nats.publisher import JetStreamPublisher

log = structlog.get_logger(__name__)

LEDGER_BUCKET = "COUNCIL_DISPATCH"
#: How long a finished request's record is kept (redeliveries, late duplicates of the request).
RETENTION_S = 7 * 24 * 3600.0

T = TypeVar("T")


class PendingPublish(BaseModel):
    """A status event about to be published (the write-ahead intent)."""

    model_config = ConfigDict(frozen=True)

    state: JobState
    subject: str
    key: str
    payload: str
    #: The events stream's last sequence before the publish: the event, if stored, is after it.
    after_seq: int


class DispatchRecord(BaseModel):
    """What the dispatcher knows about one request; the KV revision rides along (not stored)."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    submission_id: str
    council: str
    reserved_at: float
    updated_at: float
    job_id: str | None = None
    dashboard_url: str | None = None
    published: tuple[JobState, ...] = ()
    pending: PendingPublish | None = None
    revision: int = Field(default=0, exclude=True)

    @property
    def terminal(self) -> bool:
        """A terminal state was published: nothing more will be."""
        return any(s in TERMINAL_JOB_STATES for s in self.published)

    def status_event(self, state: JobState, message: str | None = None) -> CouncilJobStatus:
        """The status event of this record's job in ``state``.

        Raises:
            DispatchError: the job is not known yet (no ``job_id``).
        """
        if self.job_id is None:
            raise DispatchError(
                f"no job is recorded for request {self.request_id}", request_id=self.request_id
            )
        return CouncilJobStatus(
            submission_id=self.submission_id,
            council=self.council,
            state=state,
            request_id=self.request_id,
            job_id=self.job_id,
            message=message,
            dashboard_url=self.dashboard_url,
        )


def ledger_key(request_id: str) -> str:
    """The record's KV key: request ids use ``[A-Za-z0-9_.-]``; ``.`` (a token separator in
    KV keys, invalid twice in a row or at the end) becomes ``=``, which ids never contain, so
    the mapping is one-to-one."""
    return request_id.replace(".", "=")


class Ledger:
    """Records in the ``COUNCIL_DISPATCH`` bucket; every call is bounded by ``timeout_s``."""

    def __init__(
        self,
        kv: Any,
        js: Any,
        publisher: JetStreamPublisher,
        events_stream: str,
        timeout_s: float = 10.0,
    ) -> None:
        self._kv = kv
        self._js = js
        self._publisher = publisher
        self._events_stream = events_stream
        self._timeout_s = timeout_s

    @classmethod
    async def open(
        cls, js: Any, publisher: JetStreamPublisher, events_stream: str, timeout_s: float = 10.0
    ) -> Ledger:
        """Bind to the bucket, creating it (file storage, one revision per key) when missing."""
        try:
            kv = await asyncio.wait_for(js.key_value(LEDGER_BUCKET), timeout_s)
        except nats.js.errors.BucketNotFoundError:
            kv = await asyncio.wait_for(
                js.create_key_value(
                    api.KeyValueConfig(bucket=LEDGER_BUCKET, history=1, storage=api.StorageType.FILE)
                ),
                timeout_s,
            )
        return cls(kv, js, publisher, events_stream, timeout_s)

    async def _bounded(self, what: Awaitable[T]) -> T:
        return await asyncio.wait_for(what, self._timeout_s)

    # ---- records ---------------------------------------------------------------------------

    async def load_all(self) -> list[DispatchRecord]:
        """Every record, read in one pass over the bucket."""
        watcher = await self._bounded(self._kv.watchall(ignore_deletes=True))
        records: list[DispatchRecord] = []
        try:
            while True:
                entry = await watcher.updates(timeout=self._timeout_s)
                if entry is None:  # the end of what the bucket held when the watch began
                    break
                if entry.value:
                    records.append(_decode(entry.value, entry.revision))
        finally:
            await watcher.stop()
        return records

    async def get(self, request_id: str) -> DispatchRecord | None:
        try:
            entry = await self._bounded(self._kv.get(ledger_key(request_id)))
        except nats.js.errors.KeyNotFoundError:
            return None
        return _decode(entry.value, entry.revision) if entry.value else None

    async def reserve(self, request_id: str, submission_id: str, council: str) -> tuple[DispatchRecord, bool]:
        """The request's record, created now (True) or found (False)."""
        now = time.time()
        record = DispatchRecord(
            request_id=request_id,
            submission_id=submission_id,
            council=council,
            reserved_at=now,
            updated_at=now,
        )
        try:
            revision = await self._bounded(self._kv.create(ledger_key(request_id), _encode(record)))
        except nats.js.errors.KeyWrongLastSequenceError:
            found = await self.get(request_id)
            if found is None:  # deleted between the two calls: try once more
                return await self.reserve(request_id, submission_id, council)
            return found, False
        return record.model_copy(update={"revision": revision}), True

    async def release(self, record: DispatchRecord) -> None:
        """Delete a reservation whose job was never created."""
        await self._bounded(self._kv.delete(ledger_key(record.request_id), last=record.revision))

    async def mark_submitted(self, record: DispatchRecord, job_id: str, dashboard_url: str) -> DispatchRecord:
        if record.job_id == job_id:
            return record
        return await self._save(record.model_copy(update={"job_id": job_id, "dashboard_url": dashboard_url}))

    async def forget_finished(self, records: list[DispatchRecord], now: float | None = None) -> int:
        """Delete terminal records older than :data:`RETENTION_S`; return how many."""
        now = time.time() if now is None else now
        old = [r for r in records if r.terminal and now - r.updated_at > RETENTION_S]
        for r in old:
            await self._bounded(self._kv.delete(ledger_key(r.request_id), last=r.revision))
        return len(old)

    async def _save(self, record: DispatchRecord) -> DispatchRecord:
        record = record.model_copy(update={"updated_at": time.time()})
        try:
            revision = await self._bounded(
                self._kv.update(ledger_key(record.request_id), _encode(record), last=record.revision)
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            raise DispatchError(
                f"the ledger record of request {record.request_id} changed under this dispatcher; "
                "run one dispatcher per durable consumer (another one is writing the same records)",
                request_id=record.request_id,
            ) from None
        return record.model_copy(update={"revision": revision})

    # ---- exactly-once status events ------------------------------------------------------------

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
        record = await self._save(
            record.model_copy(
                update={
                    "pending": PendingPublish(
                        state=event.state,
                        subject=event.subject,
                        key=event.key,
                        payload=event.to_bytes().decode(),
                        after_seq=after_seq,
                    )
                }
            )
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
        return await self._save(
            record.model_copy(update={"published": (*record.published, event.state), "pending": None})
        )

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
        published = (
            record.published if pending.state in record.published else (*record.published, pending.state)
        )
        return await self._save(record.model_copy(update={"published": published, "pending": None}))

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


def _encode(record: DispatchRecord) -> bytes:
    return record.model_dump_json().encode()


def _decode(value: bytes, revision: int) -> DispatchRecord:
    return DispatchRecord.model_validate({**json.loads(value), "revision": revision})


#: Errors of a ledger call that go away by themselves (NATS restarting, a slow server).
LEDGER_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, nats.errors.Error)
