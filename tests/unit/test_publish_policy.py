"""Pure parts of publishing: retry bounds, the duplicate window, stream-config checks, backoff."""

from __future__ import annotations

from types import SimpleNamespace

import nats.errors
import nats.js.errors
import pytest
from nats.js import api

from swe_fleet.errors import NatsUnreachable
from swe_fleet.events import AGENT_RESPONSES_SUBJECTS
from swe_fleet.nats.consumer import ConsumerOptions, redelivery_backoff
from swe_fleet.nats.publisher import (
    TRANSIENT_ERRORS,
    PublishPolicy,
    default_duplicate_window_s,
    stream_config_differences,
    subject_covers,
)


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


@pytest.mark.parametrize(
    ("budget", "expected"),
    [(3.0, 600.0), (60.0, 600.0), (400.0, 800.0), (1000.0, 2000.0)],
)
def test_default_duplicate_window_is_at_least_ten_minutes_and_twice_the_budget(
    budget: float, expected: float
) -> None:
    """max(600, 2 x budget): every retry and a prompt replay land inside the window."""
    window = default_duplicate_window_s(PublishPolicy(budget_s=budget))
    assert window == expected
    assert window >= PublishPolicy(budget_s=budget).retry_horizon_s


def _config(**kw: object) -> api.StreamConfig:
    base: dict[str, object] = {
        "name": "AGENT_RESPONSES",
        "subjects": list(AGENT_RESPONSES_SUBJECTS),
        "storage": api.StorageType.FILE,
        "duplicate_window": 600.0,
    }
    return api.StreamConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_a_stream_made_by_us_is_fit() -> None:
    """Our own config has no differences."""
    assert stream_config_differences(_config(), AGENT_RESPONSES_SUBJECTS, 65) == []


def test_short_duplicate_window_is_a_difference_naming_both_numbers() -> None:
    """A 30 s window under a 65 s horizon is reported with both values."""
    [diff] = stream_config_differences(_config(duplicate_window=30.0), AGENT_RESPONSES_SUBJECTS, 65)
    assert "duplicate_window 30 s" in diff and "65 s" in diff


def test_memory_storage_and_missing_subjects_are_each_reported() -> None:
    """Memory storage and an uncovered subject: two differences, both named."""
    diffs = stream_config_differences(
        _config(storage=api.StorageType.MEMORY, subjects=["agent.response.>"]), AGENT_RESPONSES_SUBJECTS, 65
    )
    assert len(diffs) == 2
    assert "memory" in diffs[1]
    assert "council.deliberation.>" in diffs[0] and "agent.response.>" not in diffs[0].split("cover")[1]


def test_wider_stream_subjects_cover_ours() -> None:
    """A stream on '>' or 'agent.>' plus 'council.>' covers our subjects: no false mismatch."""
    assert stream_config_differences(_config(subjects=[">"]), AGENT_RESPONSES_SUBJECTS, 65) == []
    assert (
        stream_config_differences(_config(subjects=["agent.>", "council.>"]), AGENT_RESPONSES_SUBJECTS, 65)
        == []
    )


@pytest.mark.parametrize(
    ("pattern", "subject", "covers"),
    [
        ("agent.response.>", "agent.response.>", True),
        ("agent.>", "agent.response.>", True),
        (">", "council.dead", True),
        ("agent.*.completed", "agent.response.completed", True),
        ("agent.*", "agent.response.>", False),
        ("agent.response.completed", "agent.response.>", False),
        ("agent.response.*", "agent.response.>", False),
        ("council.dead", "council.dead", True),
        ("council.dead", "council.dead.x", False),
        ("council.dead.x", "council.dead", False),
        ("agent.>", "agent", False),
    ],
)
def test_subject_covers(pattern: str, subject: str, covers: bool) -> None:
    """A stream subject covers ours when it matches every subject ours can match."""
    assert subject_covers(pattern, subject) is covers


def test_redelivery_backoff_doubles_from_ack_wait_up_to_the_cap() -> None:
    """One wait per delivery, starting at ack_wait, doubling, capped."""
    assert redelivery_backoff(30, 5) == [30, 60, 120, 240, 480]
    assert redelivery_backoff(1, 4, cap_s=3) == [1, 2, 3, 3]


def test_consumer_config_carries_backoff_and_max_deliver() -> None:
    """JetStream gets explicit acks, the backoff list (first = ack wait) and max_deliver."""
    cfg = ConsumerOptions(nats_url="nats://x:1", ack_wait_s=2, max_deliver=3).consumer_config()
    assert cfg.ack_policy == api.AckPolicy.EXPLICIT
    assert cfg.backoff == [2, 4, 8] and cfg.ack_wait == 2 and cfg.max_deliver == 3


def test_backoff_longer_than_max_deliver_is_refused() -> None:
    """JetStream rejects more backoff steps than deliveries; so do the options, up front."""
    with pytest.raises(ValueError, match="max_deliver=2"):
        ConsumerOptions(nats_url="nats://x:1", max_deliver=2, backoff_s=(1, 5, 15))
    assert ConsumerOptions(nats_url="nats://x:1", max_deliver=3, backoff_s=(1, 5, 15)).redelivery_waits() == [
        1,
        5,
        15,
    ]
