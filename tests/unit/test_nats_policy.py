"""The publish retry policy as pure logic: which errors are transient, when retries stop, the
retry horizon a duplicate window must cover."""

from __future__ import annotations

from types import SimpleNamespace

import nats.errors
import nats.js.errors
import pytest

from swe_fleet.errors import NatsUnreachable
from swe_fleet.nats.policy import TRANSIENT_ERRORS, PublishPolicy


@pytest.mark.parametrize(
    "exc",
    [
        nats.errors.TimeoutError(),
        TimeoutError(),
        nats.errors.ConnectionClosedError(),
        nats.errors.ConnectionReconnectingError(),
        nats.errors.NoRespondersError(),
        nats.js.errors.NoStreamResponseError(),
        nats.js.errors.ServiceUnavailableError(code=503, description="JetStream not enabled"),
        nats.errors.StaleConnectionError(),
        NatsUnreachable("down", url="nats://x:1"),
    ],
)
def test_outage_errors_are_transient(exc: BaseException) -> None:
    """Timeouts, closed/reconnecting connections, no responders and 503 are retried."""
    assert isinstance(exc, TRANSIENT_ERRORS)


@pytest.mark.parametrize(
    "exc",
    [
        nats.errors.BadSubjectError(),
        nats.errors.MaxPayloadError(),
        nats.js.errors.BadRequestError(code=400, description="expected stream does not match"),
        nats.js.errors.NotFoundError(code=404, description="stream not found"),
    ],
)
def test_bugs_and_refusals_are_not_transient(exc: BaseException) -> None:
    """A bad subject, an oversized payload or a 400/404 is not weather: no retry."""
    assert not isinstance(exc, TRANSIENT_ERRORS)


@pytest.mark.parametrize(
    ("attempt", "elapsed", "upcoming_sleep", "stops"),
    [
        (1, 0.0, 0.5, False),
        (5, 2.4, 0.5, False),
        (5, 2.6, 0.5, True),  # the next attempt would start after the 3 s budget
        (5, 3.1, 0.0, True),
        (100, 0.0, 0.1, True),  # attempts bound it too
    ],
)
def test_retries_stop_before_an_attempt_would_start_after_the_budget(
    attempt: int, elapsed: float, upcoming_sleep: float, stops: bool
) -> None:
    """Stop when the next attempt would begin past budget_s, or after max_attempts."""
    stop = PublishPolicy(budget_s=3.0, max_attempts=100).retrying().stop
    state = SimpleNamespace(
        attempt_number=attempt, seconds_since_start=elapsed, upcoming_sleep=upcoming_sleep
    )
    assert stop(state) is stops  # type: ignore[arg-type]


def test_retry_horizon_covers_the_budget_and_one_ack_wait() -> None:
    """The horizon a duplicate window must cover is budget + one ack timeout."""
    assert PublishPolicy(ack_timeout_s=5, budget_s=60).retry_horizon_s == 65
