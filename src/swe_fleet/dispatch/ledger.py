"""The dispatcher's ledger: one JetStream key-value record per request (bucket
``COUNCIL_DISPATCH``), and the in-flight view that the ledger alone keeps.

A record is the request's reservation of an in-flight slot (written before its job is submitted,
so a restarted dispatcher counts jobs whose submission it did not get to finish), the job it got,
and which status events were published (with the write-ahead intent of the one being published:
:mod:`~swe_fleet.dispatch.status`). Terminal records are kept for :data:`RETENTION_S` (a request
redelivered after its job ended must still find that its events were published), then deleted on
start-up.

The in-flight view: every record whose job is not terminal. Every call that writes a record
updates it, so no caller keeps a copy of its own that could fall behind; :attr:`Ledger.slot_freed`
is set whenever a record leaves it. :meth:`Ledger.holding` serialises the work on one request
(its handler and the job follower never touch the same record at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import nats.js.errors
from pydantic import BaseModel, ConfigDict, Field

from swe_fleet.errors import DispatchError
from swe_fleet.events import TERMINAL_JOB_STATES, CouncilJobStatus, JobState
from swe_fleet.nats.kv import open_bucket

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
    """What the dispatcher knows about one request; the KV revision rides along (not stored).

    Attributes:
        submission_id: the deliberation's id (:func:`~swe_fleet.dispatch.requests.submission_id_for`).
        job_id: Ray's id of the job, once it is known.
    """

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
    """Records in the ``COUNCIL_DISPATCH`` bucket and the in-flight view (see the module
    docstring); every bucket call is bounded by ``timeout_s``."""

    def __init__(self, kv: Any, timeout_s: float = 10.0) -> None:
        self._kv = kv
        self._timeout_s = timeout_s
        self._in_flight: dict[str, DispatchRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Set whenever a record leaves the in-flight view (a slot is free); cleared by its waiter.
        self.slot_freed = asyncio.Event()

    @classmethod
    async def open(cls, js: Any, timeout_s: float = 10.0) -> Ledger:
        """Bind to the bucket, creating it (file storage, one revision per key) when missing."""
        return cls(await open_bucket(js, LEDGER_BUCKET, timeout_s=timeout_s), timeout_s)

    async def _bounded(self, what: Awaitable[T]) -> T:
        return await asyncio.wait_for(what, self._timeout_s)

    # ---- the in-flight view --------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests whose job is not terminal (reservations included)."""
        return len(self._in_flight)

    def in_flight_ids(self) -> list[str]:
        """The request ids in flight now (a copy: the view may change while it is walked)."""
        return list(self._in_flight)

    def in_flight_record(self, request_id: str) -> DispatchRecord | None:
        """The latest record of a request in flight, or None."""
        return self._in_flight.get(request_id)

    def is_held(self, request_id: str) -> bool:
        """Whether someone works on the request right now (see :meth:`holding`)."""
        lock = self._locks.get(request_id)
        return lock is not None and lock.locked()

    @contextlib.asynccontextmanager
    async def holding(self, request_id: str) -> AsyncIterator[None]:
        """Work on one request's record alone (its handler and the follower take turns)."""
        lock = self._locks.setdefault(request_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and request_id not in self._in_flight:
                self._locks.pop(request_id, None)

    def _track(self, record: DispatchRecord) -> DispatchRecord:
        if not record.terminal:
            self._in_flight[record.request_id] = record
        else:
            self._untrack(record.request_id)
        return record

    def _untrack(self, request_id: str) -> None:
        if self._in_flight.pop(request_id, None) is not None:
            self.slot_freed.set()

    # ---- records -------------------------------------------------------------------------------

    async def load(self, now: float | None = None) -> tuple[list[DispatchRecord], int]:
        """Read every record (one pass over the bucket), delete terminal ones older than
        :data:`RETENTION_S`, and start the in-flight view from the others.

        Returns:
            (every record read, how many were deleted).
        """
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
        now = time.time() if now is None else now
        old = [r for r in records if r.terminal and now - r.updated_at > RETENTION_S]
        for r in old:
            await self._bounded(self._kv.delete(ledger_key(r.request_id), last=r.revision))
        for r in records:
            self._track(r)
        return records, len(old)

    async def get(self, request_id: str) -> DispatchRecord | None:
        """The request's record as the bucket holds it (the in-flight view is not changed)."""
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
            return self._track(found), False
        return self._track(record.model_copy(update={"revision": revision})), True

    async def release(self, record: DispatchRecord) -> None:
        """Delete a reservation whose job was never created (its slot is free again)."""
        await self._bounded(self._kv.delete(ledger_key(record.request_id), last=record.revision))
        self._untrack(record.request_id)

    async def mark_submitted(self, record: DispatchRecord, job_id: str, dashboard_url: str) -> DispatchRecord:
        """Record the request's job (Ray's ``job_id``)."""
        if record.job_id == job_id:
            return self._track(record)
        return await self._save(record.model_copy(update={"job_id": job_id, "dashboard_url": dashboard_url}))

    async def write_intent(self, record: DispatchRecord, pending: PendingPublish) -> DispatchRecord:
        """Record that ``pending``'s event is about to be published (step 1 of the intent)."""
        return await self._save(record.model_copy(update={"pending": pending}))

    async def mark_published(self, record: DispatchRecord, state: JobState) -> DispatchRecord:
        """Record that ``state`` was published and no intent is pending (the intent's last step)."""
        published = record.published if state in record.published else (*record.published, state)
        return await self._save(record.model_copy(update={"published": published, "pending": None}))

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
        return self._track(record.model_copy(update={"revision": revision}))


def _encode(record: DispatchRecord) -> bytes:
    return record.model_dump_json().encode()


def _decode(value: bytes, revision: int) -> DispatchRecord:
    return DispatchRecord.model_validate({**json.loads(value), "revision": revision})
