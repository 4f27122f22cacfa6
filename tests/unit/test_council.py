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
    """A failed proposal is not voted on; a voter with nobody to score ends its slot uncalled,
    with a failed event that says why."""
    slots = [s for s in council.vote_slots(SPEC, _state({("t1", "a"): "x"})) if s.task.id == "t1"]
    assert [(s.agent.id, s.candidates, s.request is None) for s in slots] == [
        ("a", (), True),
        ("b", ("a",), False),
        ("c", ("a",), False),
    ]
    event = council.uncalled_event(slots[0], submission_id="s", spec=SPEC)
    assert isinstance(event, AgentResponseFailed) and event.reason.startswith("nothing to vote on")
    assert event.key == "s/t1/vote/0/a/failed"


def test_every_phase_plans_one_slot_per_agent_of_each_running_task() -> None:
    """Slots without a call included: critique, revise and vote each plan tasks x agents."""
    state = _state({("t1", "a"): "x", ("t2", "a"): "y", ("t2", "b"): "z"})
    state.tasks["t2"].critiques[1] = {"a": [("b", "a is wrong")]}
    for slots in (
        council.critique_slots(SPEC, state, 1),
        council.revise_slots(SPEC, state, 1),
        council.vote_slots(SPEC, state),
    ):
        assert [(s.task.id, s.agent.id) for s in slots] == [(t, a) for t in ("t1", "t2") for a in "abc"]
    revise = {(s.task.id, s.agent.id): s for s in council.revise_slots(SPEC, state, 1)}
    assert revise[("t2", "a")].request is not None  # critique addressed to it: a real revision
    assert revise[("t2", "b")].request is None and revise[("t2", "b")].stands == "z"  # no critique
    assert revise[("t2", "c")].request is None and revise[("t2", "c")].stands is None  # no proposal
    critique = {(s.task.id, s.agent.id): s for s in council.critique_slots(SPEC, state, 1)}
    assert critique[("t1", "a")].request is None  # the only proposal is its own


def test_an_uncalled_revision_repeats_the_standing_proposal_and_says_why() -> None:
    """No critique reached the agent: a completed revise event with the same text, no tokens,
    ``data.unchanged`` and the reason."""
    state = _state(ALL)
    slot = next(s for s in council.revise_slots(SPEC, state, 1) if (s.task.id, s.agent.id) == ("t1", "b"))
    event = council.uncalled_event(slot, submission_id="s", spec=SPEC)
    assert isinstance(event, AgentResponseCompleted)
    assert (event.content, event.output_tokens, event.key) == ("t1-b", 0, "s/t1/revise/1/b")
    assert event.data == {"unchanged": True, "reason": council.NO_CRITIQUE.format(round=1)}


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
    """A task that stopped early in round 1 ends round 1's revise slots unchanged (its critics had
    no objection) and gets no slot of a later round."""
    state = _state(ALL)
    state.tasks["t1"].settled, state.tasks["t1"].rounds_run = True, 1
    revise = [s for s in council.revise_slots(SPEC, state, 1) if s.task.id == "t1"]
    assert [(s.request, s.stands) for s in revise] == [(None, "t1-a"), (None, "t1-b"), (None, "t1-c")]
    assert all(s.reason == council.NO_OBJECTIONS.format(round=1) for s in revise)
    assert {s.task.id for s in council.critique_slots(SPEC, state, 2)} == {"t2"}
    assert {s.task.id for s in council.revise_slots(SPEC, state, 2)} == {"t2"}


def test_route_critique_splits_sections_by_heading() -> None:
    """Sections under ### <id> go to that agent; text without headings goes to everyone."""
    text = "Intro.\n### b\nb forgets empty input.\n### c:\nNO OBJECTION\n"
    assert route_critique(text, ["b", "c"]) == {"b": "b forgets empty input.", "c": "NO OBJECTION"}
    assert route_critique("All fine.", ["b", "c"]) == {"b": "All fine.", "c": "All fine."}
    proposal_form = "## Proposal by b\nToo slow."
    assert route_critique(proposal_form, ["b"]) == {"b": "Too slow."}


@pytest.mark.parametrize(
    "heading",
    ["### QA", "### Agent qa", "**qa**", "**QA:**", "## Critique of QA's proposal", "#### qa.", "### Qa:"],
)
def test_route_critique_matches_the_usual_heading_variations(heading: str) -> None:
    """Case, prefixes, bold headings and punctuation: the section still reaches its agent."""
    text = f"{heading}\nMisses the empty list.\n### dev\nFine."
    assert route_critique(text, ["qa", "dev"]) == {"qa": "Misses the empty list.", "dev": "Fine."}


def test_route_critique_gives_the_whole_text_to_a_target_whose_section_is_missing() -> None:
    """A heading naming two agents routes nowhere; an agent with no section of its own gets the
    whole critique rather than nothing."""
    text = "### qa\nBad.\n### qa and dev compared\nSimilar."
    routed = route_critique(text, ["qa", "dev"])
    assert routed["qa"] == "Bad.\n### qa and dev compared\nSimilar."
    assert routed["dev"] == text


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
    # No token probabilities came back (this completion has none): only the written scores count.
    assert event.data == {"scores": {"b": 2, "c": 9}, "expected_scores": {}}
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


def test_equal_best_scores_are_a_tie_never_broken() -> None:
    """Equal best (centred) scores: ``tied`` names them (spec order), no winner; neither vote
    count nor spec order breaks it; equal scores share a rank."""
    res = _rank({"a": {"b": 7, "c": 7}, "b": {"a": 5, "c": 6}, "c": {"a": 5, "b": 6}}, ALL)
    assert (res.outcome, res.winner, res.tied, res.winning_proposal) == ("tied", None, ["b", "c"], None)
    assert res.ranked_by == "centred"
    assert [(r.agent_id, r.rank, r.mean_score, r.centred_score, r.votes) for r in res.ranking] == [
        ("b", 1, 6.5, 0.25, 2),
        ("c", 1, 6.5, 0.25, 2),
        ("a", 3, 5.0, -0.5, 2),
    ]
    assert res.ranking[0].spread == 0.5


def test_a_judges_own_offset_does_not_decide_but_its_preference_does() -> None:
    """b and c both average 6, but c's ballot put b 4 points above a while a's and b's ballots
    were flat: centred on each voter's own mean, b leads. The means are still reported."""
    res = _rank({"a": {"b": 6, "c": 6}, "b": {"a": 6, "c": 6}, "c": {"a": 2, "b": 6}}, ALL)
    assert (res.outcome, res.winner, res.ranked_by) == ("decided", "b", "centred")
    rows = {r.agent_id: r for r in res.ranking}
    assert (rows["b"].mean_score, rows["c"].mean_score) == (6.0, 6.0)
    assert (rows["b"].centred_score, rows["c"].centred_score, rows["a"].centred_score) == (1.0, 0.0, -1.0)


def test_two_agent_councils_rank_by_mean_as_one_candidate_ballots_have_no_centre() -> None:
    two = CouncilSpec.from_text(
        "tasks: [{id: t1, prompt: x}]\nagents: [{id: a, role: r}, {id: b, role: r}]\n"
    )
    res = rank_task(two, two.tasks[0], {"a": {"b": 7.5}, "b": {"a": 6.0}}, votes_expected=2,
                    proposals={("t1", "a"): "A", ("t1", "b"): "B"}, submission_id="s")  # fmt: skip
    assert (res.outcome, res.winner, res.ranked_by) == ("decided", "b", "mean")
    assert all(r.centred_score is None for r in res.ranking)


def test_a_unique_best_mean_from_a_quorum_is_decided() -> None:
    """Two of three votes counted (the default quorum is a majority): decided."""
    res = _rank({"a": {"b": 9, "c": 4}, "b": {"a": 5, "c": 6}}, ALL)
    assert (res.outcome, res.winner, res.quorum, res.reason) == ("decided", "b", 2, None)


def test_fewer_votes_than_the_quorum_fail_the_task_saying_so() -> None:
    """One of three votes counted: no outcome, whatever the scores say."""
    res = _rank({"a": {"b": 9, "c": 4}}, ALL)
    assert (res.outcome, res.winner) == ("failed", None)
    assert res.reason == "1 of 3 votes counted; the quorum is 2"
    quorum_one = CouncilSpec.from_dict({**SPEC.model_dump(mode="json"), "protocol": {"quorum": 1}})
    res1 = rank_task(quorum_one, SPEC.tasks[0], {"a": {"b": 9, "c": 4}}, votes_expected=3,
                     proposals=ALL, submission_id="s")  # fmt: skip
    assert (res1.outcome, res1.winner, res1.quorum) == ("decided", "b", 1)


def test_no_standing_proposal_fails_the_task() -> None:
    """Every proposal failed: the task failed, and says so."""
    res = _rank({})
    assert (res.outcome, res.winner, res.reason) == (
        "failed",
        None,
        "no proposal: every agent's proposal failed",
    )


def test_no_valid_votes_means_no_winner() -> None:
    """When no vote counted, nobody wins, every mean is None and the task failed (quorum)."""
    res = _rank({}, ALL)
    assert res.winner is None and res.outcome == "failed"
    assert all(r.mean_score is None and r.spread is None for r in res.ranking)
    assert res.votes_counted == 0 and res.votes_expected == 3


def test_revise_prompts_start_with_the_critique_rounds_context() -> None:
    """A reviser's prompt starts with exactly the context its critique round had (task and every
    current proposal), so the prefix cached during critique serves it; then its critique."""
    state = _state(ALL)
    critique = council.critique_slots(SPEC, state, 1)
    state.tasks["t1"].critiques[1] = {"a": [("b", "a forgets empty input.")]}
    (revise,) = [s for s in council.revise_slots(SPEC, state, 1) if s.request is not None]
    crit_text = next(s for s in critique if s.task.id == "t1").request.messages[1]["content"]
    context = crit_text.split("\n\nYou are ")[0]
    text = revise.request.messages[1]["content"]
    assert (revise.task.id, revise.agent.id) == ("t1", "a")
    assert text.startswith(f"{context}\n\nYou are a, the council's architect.")
    assert "From b:\na forgets empty input." in text and "### a" in text


def test_voters_are_asked_in_rotated_orders_with_room_for_every_candidate() -> None:
    """Position bias: each voter gets the candidates in another order (the shared listing stays
    in spec order); the vote's token budget grows with its candidates past vote_max_tokens."""
    many = CouncilSpec.from_dict({
        **SPEC.model_dump(mode="json"),
        "agents": [{"id": f"agent-{i:02d}", "role": "r"} for i in range(8)],
        "model": {"vote_max_tokens": 16},
    })  # fmt: skip
    state = CouncilState.start(many)
    for agent in many.agents:
        state.tasks["t1"].proposals[agent.id] = "x"
    slots = [s for s in council.vote_slots(many, state) if s.task.id == "t1"]
    firsts = [s.candidates[0] for s in slots]
    assert len(set(firsts)) == len(slots)  # nobody is always asked about first
    for s in slots:
        assert sorted(s.candidates) == sorted(a.id for a in many.agents if a.id != s.agent.id)
        assert list(s.request.json_schema["properties"]["scores"]["properties"]) == list(s.candidates)
        assert s.request.max_tokens == 8 + 7 * (len("agent-00") + 6)
        listing = s.request.messages[1]["content"].split("\n\nYou are ")[0]
        assert listing.index("### agent-00") < listing.index("### agent-07")
    assert council.vote_slots(SPEC, _state(ALL))[0].request.max_tokens == SPEC.model.vote_max_tokens


def _spelled(*parts: tuple[str, dict[str, float]]) -> tuple[tuple[str, tuple[tuple[str, float], ...]], ...]:
    """Tokens with alternatives given as probabilities (the chosen one listed first)."""
    import math

    return tuple((text, tuple((t, math.log(p)) for t, p in alts.items())) for text, alts in parts)


def _vote_tokens(score_alts: dict[str, float], after: dict[str, float] | None = None):  # type: ignore[no-untyped-def]
    chosen = next(iter(score_alts))
    parts = [('{"', {'{"': 1.0}), ("scores", {"scores": 1.0}), ('":', {'":': 1.0}), (' {"', {' {"': 1.0}),
             ("b", {"b": 1.0}), ('":', {'":': 1.0}), (" ", {" ": 1.0}), (chosen, score_alts)]  # fmt: skip
    if after is not None:
        parts.append((next(iter(after)), after))
    parts.append(("}}", {"}}": 1.0}))
    tokens = _spelled(*parts)
    return "".join(t for t, _ in tokens), tokens


def test_expected_scores_weigh_the_judges_probabilities_over_score_tokens() -> None:
    """G-Eval: 0.6 on 7 and 0.3 on 8 (0.1 on a non-score) give 7.33, renormalised over scores."""
    from swe_fleet.council.ranking import expected_scores

    text, tokens = _vote_tokens({"7": 0.6, "8": 0.3, "x": 0.1})
    assert text == '{"scores": {"b": 7}}'
    assert expected_scores(text, tokens, ["b"], 1, 10) == {"b": 7.3333}
    # Too little of the mass on score tokens: left out (the written 7 counts).
    _, weak = _vote_tokens({"7": 0.3, "x": 0.7})
    assert expected_scores(text, weak, ["b"], 1, 10) == {}
    # Tokens that do not spell the text (another tokenizer's view): nothing is guessed.
    assert expected_scores(text + " ", tokens, ["b"], 1, 10) == {}


def test_a_written_1_followed_by_0_splits_into_1_and_10() -> None:
    """Tokenizers that write 10 as 1 + 0: P(10) = P(1) x P(0 next), the rest of P(1) stays 1."""
    from swe_fleet.council.ranking import expected_scores

    text, tokens = _vote_tokens({"1": 0.5, "9": 0.5}, after={"0": 0.8, "}}": 0.2})
    assert text == '{"scores": {"b": 10}}'
    assert expected_scores(text, tokens, ["b"], 1, 10) == {"b": round(0.1 * 1 + 0.4 * 10 + 0.5 * 9, 4)}


def test_votes_count_their_expected_scores_so_equal_written_scores_need_not_tie() -> None:
    """Both voters wrote 7; their probabilities differ, so the task is decided, and the event
    keeps both the written and the expected scores."""
    two = CouncilSpec.from_text("""
tasks: [{id: t1, prompt: x}]
agents: [{id: a, role: r}, {id: b, role: r}]
""")
    state = CouncilState.start(two)
    state.tasks["t1"].proposals.update(a="A", b="B")
    slots = {s.agent.id: s for s in council.vote_slots(two, state)}
    assert all(
        s.request is not None and s.request.top_logprobs == council.VOTE_TOP_LOGPROBS for s in slots.values()
    )
    text_b, tokens_b = _vote_tokens({"7": 0.5, "9": 0.5})  # a votes on b: 8.0
    events = [
        council.outcome_event(
            slots["a"], Completion(text=text_b, tokens=tokens_b), submission_id="s", spec=two
        )
    ]
    text_a = text_b.replace('"b"', '"a"')
    tokens_a = tuple(("a", alts) if t == "b" else (t, alts) for t, alts in tokens_b)
    tokens_a = tuple((t, (("7", -0.1), ("6", -2.4))) if t == "7" else (t, a) for t, a in tokens_a)
    events.append(
        council.outcome_event(
            slots["b"], Completion(text=text_a, tokens=tokens_a), submission_id="s", spec=two
        )
    )
    assert events[0].data == {"scores": {"b": 7}, "expected_scores": {"b": 8.0}}  # type: ignore[union-attr]
    council.apply(two, state, "vote", 0, events)
    (result,) = council.results(two, state, submission_id="s")
    assert result.outcome == "decided" and result.winner == "b"
    assert result.scores["a"] == {"b": 8.0} and result.scores["b"]["a"] < 7.0


def test_expected_scores_ignore_the_end_of_sequence_token_and_an_unwritten_1() -> None:
    """vLLM lists <|im_end|> after the text; a "1" alternative at a score the judge wrote as 8
    may be a 1 or the start of a 10, so it is left out rather than counted as 1."""
    from swe_fleet.council.ranking import expected_scores

    text, tokens = _vote_tokens({"8": 0.5, "1": 0.35, "7": 0.15})
    with_eos = (*tokens, ("<|im_end|>", (("<|im_end|>", 0.0),)))
    assert expected_scores(text, with_eos, ["b"], 1, 10) == {"b": round((8 * 0.5 + 7 * 0.15) / 0.65, 4)}


def test_equal_means_from_expected_scores_tie_despite_float_rounding() -> None:
    """(0.1 + 0.2) + 0.3 and (0.3 + 0.2) + 0.1 differ in the last bit; the published means do
    not, and neither do the ranks: a tie, not a winner by rounding error."""
    four = CouncilSpec.from_text("""
tasks: [{id: t1, prompt: x}]
agents: [{id: a, role: r}, {id: b, role: r}, {id: c, role: r}, {id: d, role: r}]
""")
    votes = {
        "a": {"b": 0.1, "c": 0.3, "d": 0.0},
        "b": {"a": 0.0, "c": 0.2, "d": 0.0},
        "c": {"a": 0.0, "b": 0.2, "d": 0.0},
        "d": {"a": 0.0, "b": 0.3, "c": 0.1},
    }
    assert (0.1 + 0.2) + 0.3 != (0.3 + 0.2) + 0.1
    proposals = {("t1", x): x for x in "abcd"}
    res = rank_task(four, four.tasks[0], votes, votes_expected=4, proposals=proposals, submission_id="s")
    assert res.outcome == "tied" and res.tied == ["b", "c"]
    assert [r.rank for r in res.ranking if r.agent_id in ("b", "c")] == [1, 1]
