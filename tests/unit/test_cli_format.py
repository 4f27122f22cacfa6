"""Human-readable event lines: every event type, every phase, renders (make demo prints these)."""

from __future__ import annotations

import pytest

from swe_fleet.cli import format_event
from swe_fleet.events import (
    AgentResponseCompleted,
    AgentResponseFailed,
    AnyEvent,
    CouncilJobFailed,
    DeliberationCompleted,
    RankedAgent,
)

C = {"submission_id": "s", "council": "c", "task_id": "t1"}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            AgentResponseCompleted(**C, phase="propose", agent_id="a", role="r", content="def f():\n  pass"),
            "def f():",
        ),
        (
            AgentResponseCompleted(
                **C,
                phase="critique",
                round=1,
                agent_id="a",
                role="r",
                content="### b\nok",
                data={"targets": ["b"]},
            ),
            "### b ok",
        ),
        (
            AgentResponseCompleted(
                **C, phase="vote", agent_id="a", role="r", content="{}", data={"scores": {"b": 7}}
            ),
            '{"b": 7}',
        ),
        (
            AgentResponseFailed(**C, phase="revise", round=1, agent_id="a", role="r", reason="too long"),
            "FAIL too long",
        ),
        (
            DeliberationCompleted(
                **C,
                outcome="decided",
                winner="a",
                ranking=[RankedAgent(agent_id="a", rank=1, mean_score=7.0, votes=1)],
                scores={},
                votes_counted=1,
                votes_expected=1,
            ),
            "decided: winner a",
        ),
        (
            DeliberationCompleted(
                **C,
                outcome="tied",
                winner=None,
                tied=["a", "b"],
                ranking=[],
                scores={},
                votes_counted=2,
                votes_expected=2,
            ),
            "tied: a, b",
        ),
        (
            DeliberationCompleted(
                **C,
                outcome="failed",
                winner=None,
                reason="1 of 3 votes counted; the quorum is 2",
                ranking=[],
                scores={},
                votes_counted=1,
                votes_expected=3,
            ),
            "failed: 1 of 3 votes counted; the quorum is 2",
        ),
        (CouncilJobFailed(**C, reason="stopped (SIGTERM)", job_id="s"), "FAILED: stopped"),
    ],
)
def test_every_event_type_renders_as_one_line(event: AnyEvent, expected: str) -> None:
    """Each event becomes one line carrying its gist."""
    line = format_event(event)
    assert "\n" not in line
    assert expected in line
