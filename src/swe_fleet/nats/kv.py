"""JetStream key-value buckets: bind to one, creating it when missing (the checkpoints and the
dispatcher's ledger both keep their records this way)."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.js.errors
from nats.js import api


async def open_bucket(js: Any, bucket: str, *, ttl_s: float | None = None, timeout_s: float = 10.0) -> Any:
    """Bind to ``bucket``, creating it when missing: file storage, one revision per key, entries
    expiring after ``ttl_s`` (None: never). Each step is bounded by ``timeout_s``.

    Returns:
        nats-py's ``KeyValue`` of the bucket.
    """
    try:
        return await asyncio.wait_for(js.key_value(bucket), timeout_s)
    except nats.js.errors.BucketNotFoundError:
        config = api.KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s, storage=api.StorageType.FILE)
        return await asyncio.wait_for(js.create_key_value(config), timeout_s)
