"""Stream checks as pure logic: the default duplicate window, what makes an existing stream
unfit, subject coverage, and a window that cannot cover the retry horizon."""

from __future__ import annotations

import pytest
from nats.js import api

from swe_fleet.errors import ConfigError
from swe_fleet.events import AGENT_RESPONSES_SUBJECTS
from swe_fleet.nats.policy import PublishPolicy
from swe_fleet.nats.streams import (
    default_duplicate_window_s,
    ensure_stream,
    stream_config_differences,
    subject_covers,
)


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


async def test_a_window_shorter_than_the_retry_horizon_is_a_config_error_before_any_request() -> None:
    """ensure_stream refuses a window that could let a retried event be stored twice, naming the
    setting, without asking the server anything."""

    class NoServer:
        async def stream_info(self, name: str) -> None:
            raise AssertionError("no request may be sent")

    with pytest.raises(ConfigError, match="shorter than the retry horizon 65 s") as info:
        await ensure_stream(NoServer(), "S", duplicate_window_s=30, policy=PublishPolicy(budget_s=60))
    assert info.value.setting == "duplicate_window_s"
