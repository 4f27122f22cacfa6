"""The results store: each council's final result in a JetStream key-value bucket, keyed by
submission id, for readers who come after the events (``swe-fleet result``, ``swe-fleet report``,
``swe-fleet watch``, a ``request_council`` ticket for a request that already finished).

One entry per submission (bucket ``COUNCIL_RESULTS``, key: the submission id with what KV keys do
not allow made ``_``): a :class:`CouncilRecord`, JSON, with every task's
``council.deliberation.completed`` payload (its ``transcript`` holds the keys of the task's
agent-response events) and the spec it ran (tasks, agents, protocol, model). The job's driver
writes it when the council starts (the spec, ``complete: false``, no results: a live view can
draw the whole plan) and again once every task has its result, after those results are on the
stream (``complete: true``); a retried job of the same submission writes it again, whole.
Entries expire after the bucket's time to live (``publish.results_ttl_s`` of the job that
created the bucket, default 30 days: a bucket's TTL is set when it is created). The events stay
the source of truth: a store that cannot be written costs a late reader its shortcut, never an
event.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats.js.errors
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swe_fleet.errors import UndecodableEvent
from swe_fleet.events import DeliberationCompleted
from swe_fleet.nats.kv import kv_key, open_bucket, retried_kv_call
from swe_fleet.nats.policy import PublishPolicy

BUCKET = "COUNCIL_RESULTS"
#: A bucket's entries live this long unless the spec that creates it says otherwise.
DEFAULT_TTL_S = 30 * 24 * 3600.0
#: NATS refuses messages over max_payload (1 MiB by default).
MAX_RECORD_BYTES = 900 * 1024


class CouncilRecord(BaseModel):
    """A council's final result as stored: one per submission. Fields a newer swe-fleet adds are
    ignored (a reader older than the job that wrote the record still reads it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    submission_id: str
    council: str
    #: The spec as it ran (``CouncilSpec.model_dump(mode="json")``: no credentials in it).
    spec: dict[str, Any]
    #: One per task, in the spec's order (none yet while the council runs).
    results: list[DeliberationCompleted]
    #: Every task has its result. The driver stores the record once when the council starts
    #: (the spec, no results: what ``swe-fleet watch`` draws from) and again when it is done.
    complete: bool = True
    stored_at: float = Field(default_factory=time.time)

    @property
    def task_ids(self) -> list[str]:
        return [r.task_id for r in self.results]


def record_key(submission_id: str) -> str:
    """The record's key in the bucket."""
    return kv_key(submission_id)


class ResultsStore:
    """Read and write :class:`CouncilRecord` entries (bounded, retried under a publish policy)."""

    def __init__(self, kv: Any, policy: PublishPolicy | None = None) -> None:
        self._kv = kv
        self._policy = policy or PublishPolicy()

    @classmethod
    async def open(
        cls, js: Any, policy: PublishPolicy | None = None, *, ttl_s: float = DEFAULT_TTL_S
    ) -> ResultsStore:
        """Bind to the bucket, creating it (file storage, entries kept ``ttl_s``) when missing."""
        policy = policy or PublishPolicy()
        return cls(await open_bucket(js, BUCKET, ttl_s=ttl_s, timeout_s=policy.ack_timeout_s), policy)

    @classmethod
    async def lookup(
        cls, js: Any, submission_id: str, policy: PublishPolicy | None = None
    ) -> CouncilRecord | None:
        """The record of ``submission_id`` for a reader, without creating the bucket (readers may
        not): None when there is no bucket yet or no record in it.

        Raises:
            PublishError / TimeoutError: the bucket did not answer in time (see :meth:`get`).
            UndecodableEvent: the entry is not a record.
        """
        policy = policy or PublishPolicy()
        try:
            kv = await asyncio.wait_for(js.key_value(BUCKET), policy.ack_timeout_s)
        except nats.js.errors.BucketNotFoundError:
            return None
        return await cls(kv, policy).get(submission_id)

    async def put(self, record: CouncilRecord) -> bool:
        """Store ``record`` (replacing an earlier one of the same submission).

        Returns:
            False when it is too large for one NATS message (not stored).

        Raises:
            PublishError: the bucket did not take it within the retry budget.
        """
        value = record.model_dump_json().encode()
        if len(value) > MAX_RECORD_BYTES:
            return False
        key = record_key(record.submission_id)
        what = f"storing the result of {record.submission_id}"
        await retried_kv_call(self._policy, what, BUCKET, key, lambda: self._kv.put(key, value))
        return True

    async def get(self, submission_id: str) -> CouncilRecord | None:
        """The record of ``submission_id``, or None when there is none (never stored, or expired).

        Raises:
            PublishError: the bucket did not answer within the retry budget.
            UndecodableEvent: the entry is not a record (names the key).
        """
        key = record_key(submission_id)
        what = f"reading the result of {submission_id}"
        try:
            entry = await retried_kv_call(self._policy, what, BUCKET, key, lambda: self._kv.get(key))
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            return CouncilRecord.model_validate(json.loads(entry.value))
        except (ValueError, ValidationError) as exc:
            raise UndecodableEvent(
                f"entry {key} of bucket {BUCKET} is not a council record: {exc}", entry.value
            ) from None
