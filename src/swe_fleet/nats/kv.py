"""JetStream key-value buckets: bind to one, creating it when missing, and call it under a
publish policy (the checkpoints, the results store and the dispatcher's ledger keep their
records this way)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.js import api
from tenacity import RetryError

from swe_fleet.errors import PublishError
from swe_fleet.nats.policy import PublishPolicy, describe_error

T = TypeVar("T")


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


async def retried_kv_call(
    policy: PublishPolicy, what: str, bucket: str, key: str, call: Callable[[], Awaitable[T]]
) -> T:
    """``call()`` with one bound per attempt (``policy.ack_timeout_s``), retried on transient
    errors within ``policy``'s budget. ``KeyNotFoundError`` passes through as it is.

    Raises:
        PublishError: the budget ran out, or NATS refused for a reason not worth retrying (e.g. a
            permission); ``what`` names the operation in the message.
    """
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
            subject=f"$KV.{bucket}.{key}",
            key=key,
        ) from last
    except nats.errors.Error as exc:  # not worth retrying (e.g. a permission error)
        if isinstance(exc, nats.js.errors.KeyNotFoundError):
            raise
        raise PublishError(
            f"{what} failed: {describe_error(exc)}", subject=f"$KV.{bucket}.{key}", key=key
        ) from exc
    raise AssertionError("unreachable: tenacity either returns, retries or raises")  # pragma: no cover


def kv_key(name: str) -> str:
    """A KV key for ``name``: keys allow ``[-/_=.a-zA-Z0-9]``, anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in name)
