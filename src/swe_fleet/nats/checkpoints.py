"""Council checkpoints in a JetStream key-value bucket, keyed by submission id.

The driver saves ``{"spec_hash", "done": [phase names], "state": CouncilState.to_dict()}``
(zlib-compressed JSON) after every phase; a retried job of the same submission id loads it and
resumes after the last done phase. A checkpoint too large for one NATS message is skipped with
a warning (the council goes on; that submission just cannot resume).
"""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

import nats.errors
import nats.js.errors
import structlog

from swe_fleet.errors import PublishError
from swe_fleet.nats.kv import open_bucket

log = structlog.get_logger(__name__)

BUCKET = "COUNCIL_CHECKPOINTS"
#: NATS refuses messages over max_payload (1 MiB by default); stay clear of it.
MAX_CHECKPOINT_BYTES = 900 * 1024
#: Checkpoints outlive any retry of a job, not forever.
TTL_S = 7 * 24 * 3600.0


def checkpoint_key(submission_id: str) -> str:
    """KV keys allow ``[-/_=.a-zA-Z0-9]``: anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in submission_id)


class KVCheckpoints:
    """Load and save council checkpoints in the ``COUNCIL_CHECKPOINTS`` bucket (bounded waits)."""

    def __init__(self, kv: Any, timeout_s: float = 10.0) -> None:
        self._kv = kv
        self._timeout_s = timeout_s

    @classmethod
    async def open(cls, js: Any, timeout_s: float = 10.0) -> KVCheckpoints:
        """Bind to the bucket, creating it (file storage, entries kept :data:`TTL_S`) when missing."""
        return cls(await open_bucket(js, BUCKET, ttl_s=TTL_S, timeout_s=timeout_s), timeout_s)

    async def load(self, submission_id: str) -> dict[str, Any] | None:
        """The checkpoint saved for ``submission_id``, or None."""
        try:
            entry = await asyncio.wait_for(self._kv.get(checkpoint_key(submission_id)), self._timeout_s)
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        data: dict[str, Any] = json.loads(zlib.decompress(entry.value))
        return data

    async def save(self, submission_id: str, checkpoint: dict[str, Any]) -> None:
        """Save ``checkpoint`` (skipped with a warning when too large for one message).

        Raises:
            PublishError: the bucket did not take it within the bound.
        """
        key = checkpoint_key(submission_id)
        value = zlib.compress(json.dumps(checkpoint).encode(), 6)
        if len(value) > MAX_CHECKPOINT_BYTES:
            # The council goes on; only resuming this submission becomes impossible.
            log.warning("checkpoint.too_large", key=key, bytes=len(value), limit=MAX_CHECKPOINT_BYTES)
            return
        try:
            await asyncio.wait_for(self._kv.put(key, value), self._timeout_s)
        except (TimeoutError, nats.errors.Error) as exc:
            raise PublishError(
                f"saving the checkpoint of {submission_id} failed: {type(exc).__name__}: {exc}",
                subject=f"$KV.{BUCKET}.{key}",
                key=key,
            ) from exc
