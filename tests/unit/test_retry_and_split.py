"""Retry policy (transient errors only, bounded) and even batch sharding, as pure functions."""

from __future__ import annotations

import nats.errors
import pytest
from tenacity import RetryError

from swe_fleet.llm.engine import split_evenly
from swe_fleet.nats.policy import PublishPolicy

from support.retry import run_with_retries


async def test_transient_errors_are_retried_until_success() -> None:
    """Timeouts and closed connections are retried; the publish then succeeds."""
    calls, sleeps = await run_with_retries(
        PublishPolicy(), [nats.errors.TimeoutError(), nats.errors.ConnectionClosedError()]
    )
    assert calls == 3
    assert len(sleeps) == 2 and all(0 < s <= 5.0 for s in sleeps)


async def test_attempts_are_bounded() -> None:
    """A publish that always times out stops after max_attempts."""
    policy = PublishPolicy(max_attempts=4)
    with pytest.raises(RetryError) as info:
        await run_with_retries(policy, [nats.errors.TimeoutError() for _ in range(10)])
    assert info.value.last_attempt.attempt_number == 4


async def test_non_transient_errors_are_not_retried() -> None:
    """A bad subject is a bug, not weather: it surfaces on the first attempt."""
    errors: list[BaseException] = [nats.errors.BadSubjectError(), nats.errors.BadSubjectError()]
    with pytest.raises(nats.errors.BadSubjectError):
        await run_with_retries(PublishPolicy(), errors)
    assert len(errors) == 1  # exactly one attempt was made


@pytest.mark.parametrize(
    ("n", "parts", "expected"),
    [
        (8, 2, [(0, 4), (4, 8)]),
        (7, 3, [(0, 3), (3, 5), (5, 7)]),
        (2, 4, [(0, 1), (1, 2)]),
        (0, 2, []),
    ],
)
def test_split_evenly(n: int, parts: int, expected: list[tuple[int, int]]) -> None:
    """Shards are contiguous, cover everything once, differ in size by at most one."""
    assert split_evenly(n, parts) == expected
