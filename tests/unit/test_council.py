"""The protocol as pure functions: slots, routing, vote parsing, ranking and ties."""

from __future__ import annotations

import pytest

from swe_fleet import council
from swe_fleet.chat import Completion
from swe_fleet.events import AgentResponseCompleted, AgentResponseFailed
from swe_fleet.spec import CouncilSpec

SPEC = CouncilSpec.from_text("""
name: t
tasks: [{id: t1, prompt: first task}, {id: t2, prompt: second task}]
agents: [{id: a, role: architect}, {id: b, role: developer}, {id: c, role: qa, system_prompt: custom}]
""")


def test_proposal_slots_cover_every_task_agent_pair_in_order() -> None:
    """One proposal per (task, agent), tasks outer, with the role's system prompt."""
    slots = council.proposal_slots(SPEC)
    assert [(s.task.id, s.agent.id) for s in slots] == [
        ("t1", "a"),
        ("t1", "b"),
        ("t1", "c"),
        ("t2", "a"),
        ("t2", "b"),
        ("t2", "c"),
    ]
    assert "first task" in slots[0].request.messages[1]["content"]
    assert slots[2].request.messages[0]["content"] == "custom"
    assert "architect" in slots[0].request.messages[0]["content"]


def test_vote_slots_route_other_agents_proposals_only() -> None:
    """Each voter scores the others' proposals for the same task, never its own."""
    proposals = {(t, a): f"{t}-{a}" for t in ("t1", "t2") for a in ("a", "b", "c")}
    slots = council.vote_slots(SPEC, proposals)
    assert len(slots) == 6
    first = slots[0]
    assert first.agent.id == "a" and first.candidates == ("b", "c")
    prompt = first.request.messages[1]["content"]
    assert "t1-b" in prompt and "t1-c" in prompt and "t1-a" not in prompt and "t2-b" not in prompt
    assert first.request.json_schema is not None
    assert first.request.json_schema["properties"]["scores"]["required"] == ["b", "c"]


def test_failed_proposals_are_not_candidates() -> None:
    """A proposal that failed is not put to the vote; a voter with nobody to score gets no slot."""
    proposals = {("t1", "a"): "x"}
    slots = council.vote_slots(SPEC, proposals)
    assert [(s.agent.id, s.candidates) for s in slots] == [("b", ("a",)), ("c", ("a",))]


@pytest.mark.parametrize(
    "text",
    [
        '{"scores": {"b": 7, "c": 3}}',
        'Sure! ```json\n{"b": 7, "c": 3}\n```',
        '{"scores": {"b": 7.0, "c": 3, "extra": 1}}',
    ],
)
def test_parse_vote_accepts_wrapped_and_flat_forms(text: str) -> None:
    """Votes parse from the schema form, a flat object, or JSON wrapped in prose."""
    assert council.parse_vote(text, ["b", "c"], 1, 10) == {"b": 7, "c": 3}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("no json here", "no JSON object"),
        ('{"scores": {"b": 7}}', "no score for 'c'"),
        ('{"b": 11, "c": 1}', "outside 1..10"),
        ('{"b": "high", "c": 1}', "not an integer"),
        ('{"b": 7, "c": 1', "no JSON object"),
    ],
)
def test_parse_vote_rejects_with_reason(text: str, reason: str) -> None:
    """Unusable votes raise ValueError saying why."""
    with pytest.raises(ValueError, match=reason):
        council.parse_vote(text, ["b", "c"], 1, 10)


def test_unparseable_vote_becomes_a_failed_event() -> None:
    """A vote that cannot be parsed is an agent.response.failed with the text kept, never a crash."""
    slot = council.vote_slots(SPEC, {("t1", "b"): "x", ("t1", "a"): "y"})[0]
    event = council.outcome_event(slot, Completion(text="I like them all"), submission_id="s", spec=SPEC)
    assert isinstance(event, AgentResponseFailed)
    assert event.reason.startswith("unparseable vote")
    assert event.content == "I like them all"


def test_backend_error_and_empty_text_become_failed_events() -> None:
    """A per-request backend error and an empty answer both yield failed events with reasons."""
    slot = council.proposal_slots(SPEC)[0]
    too_long = council.outcome_event(
        slot, Completion(text="", error="prompt too long"), submission_id="s", spec=SPEC
    )
    empty = council.outcome_event(slot, Completion(text="  "), submission_id="s", spec=SPEC)
    assert isinstance(too_long, AgentResponseFailed) and too_long.reason == "prompt too long"
    assert isinstance(empty, AgentResponseFailed) and empty.reason == "empty response"


def test_completed_vote_carries_parsed_scores() -> None:
    """A good vote's event carries the parsed scores in data."""
    slot = council.vote_slots(SPEC, {("t1", "b"): "x", ("t1", "c"): "y"})[0]
    event = council.outcome_event(
        slot,
        Completion(text='{"scores": {"b": 2, "c": 9}}', output_tokens=9),
        submission_id="s",
        spec=SPEC,
    )
    assert isinstance(event, AgentResponseCompleted)
    assert event.data == {"scores": {"b": 2, "c": 9}}
    assert event.key == "s/t1/vote/0/a"


def test_ranking_orders_by_mean_score() -> None:
    """Higher mean score ranks first; the winner's proposal is attached."""
    votes = {"a": {"b": 9, "c": 4}, "b": {"a": 5, "c": 6}, "c": {"a": 7, "b": 8}}
    res = council.rank_task(
        SPEC,
        SPEC.tasks[0],
        votes,
        votes_expected=3,
        proposals={("t1", "b"): "B's plan"},
        submission_id="s",
    )
    assert [r.agent_id for r in res.ranking] == ["b", "a", "c"]
    assert res.winner == "b" and res.winning_proposal == "B's plan"
    assert res.ranking[0].mean_score == 8.5
    assert res.votes_counted == 3 and res.scores == votes


def test_ties_break_on_vote_count_then_spec_order() -> None:
    """Equal means: more votes first; then the agent listed first in the spec."""
    votes = {"a": {"c": 6}, "b": {"a": 6, "c": 6}}
    res = council.rank_task(SPEC, SPEC.tasks[0], votes, votes_expected=3, proposals={}, submission_id="s")
    assert [r.agent_id for r in res.ranking] == ["c", "a", "b"]
    votes2 = {"c": {"a": 5, "b": 5}}
    res2 = council.rank_task(SPEC, SPEC.tasks[0], votes2, votes_expected=3, proposals={}, submission_id="s")
    assert [r.agent_id for r in res2.ranking] == ["a", "b", "c"]


def test_no_valid_votes_means_no_winner() -> None:
    """When no vote counted, nobody wins and every mean is None."""
    res = council.rank_task(SPEC, SPEC.tasks[0], {}, votes_expected=3, proposals={}, submission_id="s")
    assert res.winner is None
    assert all(r.mean_score is None for r in res.ranking)
    assert res.votes_counted == 0 and res.votes_expected == 3
