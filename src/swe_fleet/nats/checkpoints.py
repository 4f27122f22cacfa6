"""Council checkpoints in a JetStream key-value bucket, keyed by submission id.

The driver saves ``{"spec_hash", "done": {task: [phase names]}, "state": {task: TaskState}}``
(zlib-compressed JSON) each time a task finishes a phase; a retried job of the same submission id
loads it and resumes each task after its own last done phase. A checkpoint too large for one
NATS message is skipped with a warning (the council goes on; that submission just cannot resume).

Saves and loads retry under the same :class:`~swe_fleet.nats.policy.PublishPolicy` as the job's
event publishes (one bound per attempt, one budget in total): a NATS pause shorter than the
budget never fails a job; a longer one raises :class:`~swe_fleet.errors.PublishError` naming the
operation, the attempts, the time spent and the last error.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import nats.js.errors
import structlog

from swe_fleet.nats.kv import kv_key, open_bucket, retried_kv_call
from swe_fleet.nats.policy import PublishPolicy

log = structlog.get_logger(__name__)

BUCKET = "COUNCIL_CHECKPOINTS"
#: NATS refuses messages over max_payload (1 MiB by default); stay clear of it.
MAX_CHECKPOINT_BYTES = 900 * 1024
#: Checkpoints outlive any retry of a job, not forever.
TTL_S = 7 * 24 * 3600.0


def checkpoint_key(submission_id: str) -> str:
    """The checkpoint's key: the submission id with what KV keys do not allow made ``_``."""
    return kv_key(submission_id)


class KVCheckpoints:
    """Load and save council checkpoints in the ``COUNCIL_CHECKPOINTS`` bucket (bounded, retried)."""

    def __init__(self, kv: Any, policy: PublishPolicy | None = None) -> None:
        self._kv = kv
        self._policy = policy or PublishPolicy()

    @classmethod
    async def open(cls, js: Any, policy: PublishPolicy | None = None) -> KVCheckpoints:
        """Bind to the bucket, creating it (file storage, entries kept :data:`TTL_S`) when missing."""
        policy = policy or PublishPolicy()
        return cls(await open_bucket(js, BUCKET, ttl_s=TTL_S, timeout_s=policy.ack_timeout_s), policy)

    async def load(self, submission_id: str) -> dict[str, Any] | None:
        """The checkpoint saved for ``submission_id``, or None.

        Raises:
            PublishError: the bucket did not answer within the retry budget.
        """
        key = checkpoint_key(submission_id)
        try:
            entry = await retried_kv_call(
                self._policy,
                f"loading the checkpoint of {submission_id}",
                BUCKET,
                key,
                lambda: self._kv.get(key),
            )
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        data: dict[str, Any] = json.loads(zlib.decompress(entry.value))
        return data

    async def save(self, submission_id: str, checkpoint: dict[str, Any], *, after: str = "") -> None:
        """Save ``checkpoint`` (skipped with a warning when too large for one message); ``after``
        names the phase it follows, for the error message.

        Raises:
            PublishError: the bucket did not take it within the retry budget.
        """
        key = checkpoint_key(submission_id)
        value = zlib.compress(json.dumps(checkpoint).encode(), 6)
        if len(value) > MAX_CHECKPOINT_BYTES:
            # The council goes on; only resuming this submission becomes impossible.
            log.warning("checkpoint.too_large", key=key, bytes=len(value), limit=MAX_CHECKPOINT_BYTES)
            return
        what = f"saving the checkpoint of {submission_id}" + (f" after {after}" if after else "")
        await retried_kv_call(self._policy, what, BUCKET, key, lambda: self._kv.put(key, value))
