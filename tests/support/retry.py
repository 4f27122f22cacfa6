"""Drives a tenacity policy against a scripted list of errors, with no real sleeping."""

from __future__ import annotations

from typing import Any


async def run_with_retries(policy: Any, errors: list[BaseException]) -> tuple[int, list[float]]:
    """Run ``policy.retrying(sleep=...)`` around a call that raises ``errors`` in turn, then
    succeeds; return (calls made, sleeps requested)."""
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    calls = 0
    async for attempt in policy.retrying(sleep=fake_sleep):
        with attempt:
            calls += 1
            if errors:
                raise errors.pop(0)
    return calls, sleeps
