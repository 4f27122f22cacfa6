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

import asyncio
import json
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import structlog
from tenacity import RetryError

from swe_fleet.errors import PublishError
from swe_fleet.nats.kv import open_bucket
from swe_fleet.nats.policy import PublishPolicy, describe_error

log = structlog.get_logger(__name__)

T = TypeVar("T")

BUCKET = "COUNCIL_CHECKPOINTS"
#: NATS refuses messages over max_payload (1 MiB by default); stay clear of it.
MAX_CHECKPOINT_BYTES = 900 * 1024
#: Checkpoints outlive any retry of a job, not forever.
TTL_S = 7 * 24 * 3600.0


def checkpoint_key(submission_id: str) -> str:
    """KV keys allow ``[-/_=.a-zA-Z0-9]``: anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in submission_id)


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
            entry = await self._retried(
                f"loading the checkpoint of {submission_id}", key, lambda: self._kv.get(key)
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
        await self._retried(what, key, lambda: self._kv.put(key, value))

    async def _retried(self, what: str, key: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` with one bound per attempt, retried on transient errors within the budget."""
        policy = self._policy
        started = time.monotonic()
        attempts = 0
        try:
            async for attempt in policy.retrying():
                with attempt:
                    attempts += 1
                    return await asyncio.wait_for(call(), policy.ack_timeout_s)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise PublishError(
                f"{what} failed: NATS did not take it in {attempts} attempts over "
                f"{time.monotonic() - started:.0f} s (retry budget {policy.budget_s:.0f} s); last error: "
                f"{describe_error(last)}",
                subject=f"$KV.{BUCKET}.{key}",
                key=key,
            ) from last
        except nats.errors.Error as exc:  # not worth retrying (e.g. a permission error)
            if isinstance(exc, nats.js.errors.KeyNotFoundError):
                raise
            raise PublishError(
                f"{what} failed: {describe_error(exc)}", subject=f"$KV.{BUCKET}.{key}", key=key
            ) from exc
        raise AssertionError("unreachable: tenacity either returns, retries or raises")  # pragma: no cover
