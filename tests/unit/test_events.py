"""The wire contract: keys, round trips, payloads a consumer cannot decode, and the dispatcher's
job status events."""

from __future__ import annotations

import json

import pytest

from swe_fleet.cli import format_event
from swe_fleet.dispatch.requests import submission_id_for
from swe_fleet.errors import UndecodableEvent
from swe_fleet.events import (
    AGENT_RESPONSES_SUBJECTS,
    COUNCIL_JOB_STATUS_SUBJECTS,
    JOB_STATES,
    AgentResponseCompleted,
    AgentResponseFailed,
    CouncilJobFailed,
    CouncilJobStatus,
    DeliberationCompleted,
    RankedAgent,
    agent_response_key,
    decode_event,
    event_json_schema,
)
from swe_fleet.nats.consumer import COUNCIL_SUBJECTS
from swe_fleet.nats.streams import subject_covers

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
        outcome="decided",
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


def test_status_events_have_one_key_per_job_and_state() -> None:
    """Every state of a job has its own key and subject; no key collides with the driver's
    job-failed key or an agent response's key."""
    sid = submission_id_for("r-1")
    events = [
        CouncilJobStatus(submission_id=sid, council="c", state=s, request_id="r-1", job_id=sid)
        for s in JOB_STATES
    ]
    keys = {e.key for e in events}
    assert len(keys) == len(JOB_STATES)
    assert [e.subject for e in events] == list(COUNCIL_JOB_STATUS_SUBJECTS)
    assert (
        CouncilJobFailed(submission_id=sid, council="c", task_id="*", reason="x", job_id=sid).key not in keys
    )
    assert agent_response_key(sid, "job", "propose", 0, "status") not in keys
    assert sid == "dispatch-r-1"


def test_status_events_are_decoded_by_consumers_not_dead_lettered() -> None:
    """A status event on council.job.failed decodes as CouncilJobStatus, next to the driver's
    CouncilJobFailed on the same subject; the consumer's default subjects and the events stream
    cover every status subject."""
    status = CouncilJobStatus(
        submission_id="s", council="c", state="failed", request_id="r", job_id="s", message="exit 1"
    )
    assert decode_event(status.to_bytes()) == status
    driver = CouncilJobFailed(submission_id="s", council="c", task_id="*", reason="boom", job_id="s")
    assert isinstance(decode_event(driver.to_bytes()), CouncilJobFailed)
    for subject in COUNCIL_JOB_STATUS_SUBJECTS:
        assert subject in COUNCIL_SUBJECTS
        assert any(subject_covers(p, subject) for p in AGENT_RESPONSES_SUBJECTS)


def test_a_status_event_renders_as_one_line() -> None:
    """swe-fleet consume prints a status event with its state, request and reason."""
    line = format_event(
        CouncilJobStatus(
            submission_id="s", council="c", state="failed", request_id="r", job_id="s", message="a\nb"
        )
    )
    assert "\n" not in line and "FAILED" in line and "request r" in line and "a b" in line


def test_a_version_1_result_decodes_with_its_outcome_derived() -> None:
    """Results published before outcomes existed still decode: decided when they named a
    winner, failed when they did not."""
    for winner, outcome in (("a", "decided"), (None, "failed")):
        payload = json.dumps({
            **COMMON, "schema_version": 1, "event": "council.deliberation.completed", "winner": winner,
            "ranking": [], "scores": {}, "votes_counted": 0, "votes_expected": 0,
        }).encode()  # fmt: skip
        back = decode_event(payload)
        assert isinstance(back, DeliberationCompleted) and back.outcome == outcome
