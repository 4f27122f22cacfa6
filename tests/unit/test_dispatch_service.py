"""The dispatcher service's pure parts: how long a failed request waits before it comes back."""

from __future__ import annotations

from swe_fleet.dispatch.service import retry_delay_s


def test_retry_delays_grow_and_are_capped() -> None:
    """A request that keeps failing to submit comes back less and less often, at most every minute."""
    delays = [retry_delay_s(n) for n in range(1, 10)]
    assert delays == sorted(delays) and delays[0] == 2.0 and delays[-1] == 60.0
