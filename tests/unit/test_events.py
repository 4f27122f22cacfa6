"""The wire contract: keys, round trips, and payloads a consumer cannot decode."""

from __future__ import annotations

import json

import pytest

from swe_fleet.errors import UndecodableEvent
from swe_fleet.events import (
    AgentResponseCompleted,
    AgentResponseFailed,
    DeliberationCompleted,
    RankedAgent,
    decode_event,
    event_json_schema,
)

COMMON = {"submission_id": "sub-1", "council": "c", "task_id": "t1"}


def test_agent_response_key_layout() -> None:
    """The key is submission/task/phase/round/agent."""
    e = AgentResponseCompleted(**COMMON, phase="vote", round=0, agent_id="qa", role="qa", content="x")
    assert e.key == "sub-1/t1/vote/0/qa"
    assert e.subject == "agent.response.completed"


def test_failed_event_has_its_own_key_next_to_the_completed_one() -> None:
    """A failure is keyed apart from the success, so a retried job's success is not deduplicated away."""
    ok = AgentResponseCompleted(**COMMON, phase="propose", agent_id="a", role="r", content="x")
    bad = AgentResponseFailed(**COMMON, phase="propose", agent_id="a", role="r", reason="boom")
    assert bad.key == f"{ok.key}/failed"
    assert bad.subject == "agent.response.failed"


def test_job_failed_key_names_the_attempt() -> None:
    """Each failed attempt of a submission has its own key (a failed retry is not a duplicate)."""
    from swe_fleet.events import CouncilJobFailed

    a = CouncilJobFailed(**COMMON, reason="x", job_id="sub-1")
    b = CouncilJobFailed(**COMMON, reason="x", job_id="sub-1-retry1")
    assert a.key == "sub-1/job/failed/sub-1" and a.key != b.key
    assert decode_event(b.to_bytes()) == b


@pytest.mark.parametrize("version", ["2", None, True, 1.5])
def test_non_integer_schema_version_is_undecodable(version: object) -> None:
    """A schema_version that is not an integer goes to the dead letters, not a crash."""
    payload = json.dumps({**COMMON, "event": "agent.response.completed", "schema_version": version}).encode()
    with pytest.raises(UndecodableEvent, match="not an integer"):
        decode_event(payload)


def test_deliberation_key_and_round_trip() -> None:
    """A deliberation result round-trips through bytes with its ranking intact."""
    e = DeliberationCompleted(
        **COMMON,
        winner="a",
        ranking=[RankedAgent(agent_id="a", rank=1, mean_score=7.0, votes=1)],
        scores={"b": {"a": 7}},
        votes_counted=1,
        votes_expected=2,
    )
    assert e.key == "sub-1/t1/deliberation"
    back = decode_event(e.to_bytes())
    assert back == e


def test_not_json_is_undecodable() -> None:
    """Garbage bytes raise UndecodableEvent with the payload kept."""
    with pytest.raises(UndecodableEvent) as info:
        decode_event(b"\xff not json")
    assert info.value.payload == b"\xff not json"


def test_unknown_event_type_is_undecodable() -> None:
    """A JSON object that is no council event names the problem."""
    with pytest.raises(UndecodableEvent, match="invalid event"):
        decode_event(json.dumps({**COMMON, "event": "something.else"}).encode())


def test_newer_schema_version_asks_for_an_upgrade() -> None:
    """An event from a newer producer is refused with advice, not misread."""
    payload = json.dumps({**COMMON, "event": "agent.response.completed", "schema_version": 99}).encode()
    with pytest.raises(UndecodableEvent, match="upgrade swe-fleet"):
        decode_event(payload)


def test_json_schema_covers_all_event_types() -> None:
    """The exported JSON Schema describes every event type."""
    text = json.dumps(event_json_schema())
    for name in (
        "AgentResponseCompleted",
        "AgentResponseFailed",
        "DeliberationCompleted",
        "CouncilJobFailed",
    ):
        assert name in text
