"""The protocol's pure pieces: slots, routing, vote parsing, ranking and ties."""

from __future__ import annotations

import pytest

from swe_fleet.council import protocol as council
from swe_fleet.council.prompts import shorten
from swe_fleet.council.ranking import parse_vote, rank_task
from swe_fleet.council.routing import route_critique
from swe_fleet.council.state import CouncilState
from swe_fleet.errors import InvalidVote
from swe_fleet.events import AgentResponseCompleted, AgentResponseFailed
from swe_fleet.llm.base import Completion
from swe_fleet.spec import CouncilSpec

SPEC = CouncilSpec.from_text("""
name: t
tasks: [{id: t1, prompt: first task}, {id: t2, prompt: second task}]
agents: [{id: a, role: architect}, {id: b, role: developer}, {id: c, role: qa, role_prompt: custom}]
""")


def _state(proposals: dict[tuple[str, str], str]) -> CouncilState:
    state = CouncilState.start(SPEC)
    for (task, agent), text in proposals.items():
        state.tasks[task].proposals[agent] = text
    return state


ALL = {(t, a): f"{t}-{a}" for t in ("t1", "t2") for a in ("a", "b", "c")}


def test_proposal_slots_cover_every_task_agent_pair_in_order() -> None:
    """One proposal per (task, agent), tasks outer; the shared council prompt as system message,
    the task first in the user turn, then the agent's role and role prompt."""
    slots = council.proposal_slots(SPEC)
    assert [(s.task.id, s.agent.id) for s in slots] == [
        ("t1", "a"), ("t1", "b"), ("t1", "c"), ("t2", "a"), ("t2", "b"), ("t2", "c")]  # fmt: skip
    assert {s.request.messages[0]["content"] for s in slots} == {SPEC.protocol.council_prompt}
    user = slots[0].request.messages[1]["content"]
    assert user.startswith("Task t1:\nfirst task") and "You are a, the council's architect." in user
    assert "the council's qa. custom" in slots[2].request.messages[1]["content"]


def test_vote_slots_route_other_agents_proposals_only() -> None:
    """Each voter scores the others' proposals for the same task, never its own: the listing
    shows the task's proposals (shared context), the schema admits only the others."""
    slots = council.vote_slots(SPEC, _state(ALL))
    assert len(slots) == 6
    first = slots[0]
    assert first.agent.id == "a" and first.candidates == ("b", "c")
    prompt = first.request.messages[1]["content"]
    assert "### b\nt1-b" in prompt and "### c\nt1-c" in prompt and "t2-b" not in prompt
    assert "except your own" in prompt and '"b": "<score>", "c": "<score>"' in prompt
    assert first.request.json_schema is not None
    assert first.request.json_schema["properties"]["scores"]["required"] == ["b", "c"]


def test_failed_proposals_are_not_candidates() -> None:
    """A failed proposal is not voted on; a voter with nobody to score gets no slot."""
    slots = council.vote_slots(SPEC, _state({("t1", "a"): "x"}))
    assert [(s.agent.id, s.candidates) for s in slots] == [("b", ("a",)), ("c", ("a",))]


def test_critique_slots_target_the_other_current_proposals() -> None:
    """A critic sees the task's current proposals under headings and is asked for sections on
    the others only, with the no-objection signal."""
    slots = council.critique_slots(SPEC, _state(ALL), 1)
    assert len(slots) == 6
    first = slots[0]
    assert (first.phase, first.round, first.candidates) == ("critique", 1, ("b", "c"))
    prompt = first.request.messages[1]["content"]
    assert "### b\nt1-b" in prompt and "t2-b" not in prompt and "NO OBJECTION" in prompt
    assert "under its own heading (### b, ### c)" in prompt


@pytest.mark.parametrize("phase", ["critique", "vote"])
def test_prompts_of_one_task_share_the_context_before_the_role(phase: str) -> None:
    """Every agent's prompt for a task starts with the same context (task and every proposal),
    so an engine's prefix cache computes it once per task; the role comes after it."""
    state = _state(ALL)
    slots = council.critique_slots(SPEC, state, 1) if phase == "critique" else council.vote_slots(SPEC, state)
    t1 = [s.request.messages[1]["content"] for s in slots if s.task.id == "t1"]
    contexts = {text.split("\n\nYou are ")[0] for text in t1}
    assert len(t1) == 3 and len(contexts) == 1
    (context,) = contexts
    assert all(f"### {a}\nt1-{a}" in context for a in ("a", "b", "c"))
    assert all(text.startswith(f"{context}\n\nYou are ") for text in t1)


def test_settled_tasks_get_no_more_critique_or_revise() -> None:
    """A task that stopped early is skipped by later critique and revise batches."""
    state = _state(ALL)
    state.tasks["t1"].settled = True
    assert {s.task.id for s in council.critique_slots(SPEC, state, 2)} == {"t2"}


def test_route_critique_splits_sections_by_heading() -> None:
    """Sections under ### <id> go to that agent; text without headings goes to everyone."""
    text = "Intro.\n### b\nb forgets empty input.\n### c:\nNO OBJECTION\n"
    assert route_critique(text, ["b", "c"]) == {"b": "b forgets empty input.", "c": "NO OBJECTION"}
    assert route_critique("All fine.", ["b", "c"]) == {"b": "All fine.", "c": "All fine."}
    proposal_form = "## Proposal by b\nToo slow."
    assert route_critique(proposal_form, ["b"]) == {"b": "Too slow."}


def test_shorten_is_deterministic_and_says_what_it_cut() -> None:
    """Long text keeps its head and a marker with the number of characters cut."""
    assert shorten("abc", 10) == "abc"
    assert shorten("x" * 150, 100) == "x" * 100 + "\n[... 50 characters cut]"


@pytest.mark.parametrize("text", [
    '{"scores": {"b": 7, "c": 3}}',
    'Sure! ```json\n{"b": 7, "c": 3}\n```',
    '{"scores": {"b": 7.0, "c": 3, "extra": 1}}',
])  # fmt: skip
def test_parse_vote_accepts_wrapped_and_flat_forms(text: str) -> None:
    """Votes parse from the schema form, a flat object, or JSON wrapped in prose."""
    assert parse_vote(text, ["b", "c"], 1, 10) == {"b": 7, "c": 3}


@pytest.mark.parametrize(("text", "reason"), [
    ("no json here", "no JSON object"),
    ('{"scores": {"b": 7}}', "no score for 'c'"),
    ('{"b": 11, "c": 1}', "outside 1..10"),
    ('{"b": "high", "c": 1}', "not an integer"),
    ('{"b": 7, "c": 1', "no JSON object"),
])  # fmt: skip
def test_parse_vote_rejects_with_reason(text: str, reason: str) -> None:
    """Unusable votes raise ValueError saying why."""
    with pytest.raises(InvalidVote, match=reason):
        parse_vote(text, ["b", "c"], 1, 10)


def test_unparseable_vote_becomes_a_failed_event() -> None:
    """A vote that cannot be parsed is an agent.response.failed with the text kept, never a crash."""
    slot = council.vote_slots(SPEC, _state(ALL))[0]
    event = council.outcome_event(slot, Completion(text="I like them all"), submission_id="s", spec=SPEC)
    assert isinstance(event, AgentResponseFailed)
    assert event.reason.startswith("unparseable vote")
    assert event.content == "I like them all"


def test_backend_error_and_empty_text_become_failed_events() -> None:
    """A per-request backend error and an empty answer both yield failed events with reasons."""
    slot = council.proposal_slots(SPEC)[0]
    too_long = council.outcome_event(
        slot, Completion(text="", error="too long"), submission_id="s", spec=SPEC
    )
    empty = council.outcome_event(slot, Completion(text="  "), submission_id="s", spec=SPEC)
    assert isinstance(too_long, AgentResponseFailed) and too_long.reason == "too long"
    assert isinstance(empty, AgentResponseFailed) and empty.reason == "empty response"


def test_completed_vote_carries_parsed_scores() -> None:
    """A good vote's event carries the parsed scores in data."""
    slot = council.vote_slots(SPEC, _state(ALL))[0]
    completion = Completion(text='{"scores": {"b": 2, "c": 9}}', output_tokens=9)
    event = council.outcome_event(slot, completion, submission_id="s", spec=SPEC)
    assert isinstance(event, AgentResponseCompleted)
    assert event.data == {"scores": {"b": 2, "c": 9}}
    assert event.key == "s/t1/vote/0/a"


def _rank(votes: dict[str, dict[str, int]], proposals: dict[tuple[str, str], str] | None = None):  # type: ignore[no-untyped-def]
    return rank_task(
        SPEC, SPEC.tasks[0], votes, votes_expected=3, proposals=proposals or {}, submission_id="s"
    )


def test_ranking_orders_by_mean_score() -> None:
    """Higher mean score ranks first; the winner's proposal is attached."""
    votes = {"a": {"b": 9, "c": 4}, "b": {"a": 5, "c": 6}, "c": {"a": 7, "b": 8}}
    res = _rank(votes, {("t1", "b"): "B's plan"})
    assert [r.agent_id for r in res.ranking] == ["b", "a", "c"]
    assert res.winner == "b" and res.winning_proposal == "B's plan"
    assert res.ranking[0].mean_score == 8.5
    assert res.votes_counted == 3 and res.scores == votes


def test_ties_break_on_vote_count_then_spec_order() -> None:
    """Equal means: more votes first; then the agent listed first in the spec."""
    res = _rank({"a": {"c": 6}, "b": {"a": 6, "c": 6}})
    assert [r.agent_id for r in res.ranking] == ["c", "a", "b"]
    res2 = _rank({"c": {"a": 5, "b": 5}})
    assert [r.agent_id for r in res2.ranking] == ["a", "b", "c"]


def test_no_valid_votes_means_no_winner() -> None:
    """When no vote counted, nobody wins and every mean is None."""
    res = _rank({})
    assert res.winner is None
    assert all(r.mean_score is None for r in res.ranking)
    assert res.votes_counted == 0 and res.votes_expected == 3


def test_revise_prompts_start_with_the_critique_rounds_context() -> None:
    """A reviser's prompt starts with exactly the context its critique round had (task and every
    current proposal), so the prefix cached during critique serves it; then its critique."""
    state = _state(ALL)
    critique = council.critique_slots(SPEC, state, 1)
    state.tasks["t1"].critiques[1] = {"a": [("b", "a forgets empty input.")]}
    (revise,) = council.revise_slots(SPEC, state, 1)
    crit_text = next(s for s in critique if s.task.id == "t1").request.messages[1]["content"]
    context = crit_text.split("\n\nYou are ")[0]
    text = revise.request.messages[1]["content"]
    assert (revise.task.id, revise.agent.id) == ("t1", "a")
    assert text.startswith(f"{context}\n\nYou are a, the council's architect.")
    assert "From b:\na forgets empty input." in text and "### a" in text
