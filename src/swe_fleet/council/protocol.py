"""The deliberation protocol as pure functions: state + phase -> batch of chat requests;
completions -> events -> new state.

Phases, each planned for the tasks given (one task when the deliberation is pipelined, all of
them with the barrier schedule; a spec narrowed to one task by :meth:`CouncilSpec.for_task` also
narrows the agents to that task's own):

1. **propose** (round 0): every agent answers every task.
2. **critique** (rounds 1..k): every agent critiques the other agents' *current* proposals for
   the same task, one section per proposal (``### <agent_id>``).
3. **revise** (same round): every agent revises its proposal given the critique sections
   addressed to it. Then the next round critiques the revisions.
4. **vote**: every agent scores every other agent's final proposal, as JSON, asked for the scores
   in an order rotated per voter (the proposals' listing stays in spec order: it is the shared,
   cached context).

A failed proposal is out of the running for that task (not critiqued, revised or voted on) but
its agent still critiques and votes; a failed revision keeps the previous proposal.

Every slot a phase plans ends in exactly one event: each phase that runs for a task plans one
slot per agent. A slot that needs no model call ends without one: a revision with no critique
addressed to it (or of a task whose critics all had no objection) is a completed event that
repeats the standing proposal with ``data: {"unchanged": true, "reason": ...}``; an agent with
nothing to do (no proposal of its own to revise, no other proposal to critique or score) gets a
failed event saying so. A task's planned slots are therefore ``agents x (2 + 2 x rounds_run)``.

Where the rest lives: the state between phases in :mod:`~swe_fleet.council.state`, the prompts
(shared context first, for the prefix cache) in :mod:`~swe_fleet.council.prompts`, critique
routing and early stop in :mod:`~swe_fleet.council.routing` (the signal is
:class:`swe_fleet.spec.ProtocolSpec`'s), votes and the ranking rule in
:mod:`~swe_fleet.council.ranking`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swe_fleet.council.prompts import (
    CURRENT_PROPOSALS,
    chat_request,
    proposals_context,
    shorten,
    task_context,
)
from swe_fleet.council.ranking import (
    expected_scores,
    parse_vote,
    rank_task,
    rotated,
    vote_schema,
    vote_token_budget,
)
from swe_fleet.council.routing import no_objections, route_critique
from swe_fleet.council.state import CouncilState, TaskState
from swe_fleet.errors import InvalidVote
from swe_fleet.events import AgentResponseCompleted, AgentResponseFailed, DeliberationCompleted, Phase
from swe_fleet.llm.base import ChatRequest, Completion
from swe_fleet.spec import AgentSpec, CouncilSpec, TaskSpec

__all__ = [
    "Outcome",
    "Slot",
    "apply",
    "critique_slots",
    "outcome_event",
    "phase_plan",
    "phase_slots",
    "proposal_slots",
    "results",
    "revise_slots",
    "uncalled_event",
    "vote_slots",
]
Outcome = AgentResponseCompleted | AgentResponseFailed


@dataclass(frozen=True)
class Slot:
    """One (task, agent, phase, round) position and the request that fills it."""

    task: TaskSpec
    agent: AgentSpec
    phase: Phase
    round: int
    #: None: the slot ends without a model call (:func:`uncalled_event`, module docstring).
    request: ChatRequest | None
    #: The other agents this response is about (critique targets, vote candidates).
    candidates: tuple[str, ...] = ()
    #: Why an uncalled slot needs no call.
    reason: str = ""
    #: An uncalled revision: the proposal that stands unchanged.
    stands: str | None = None


def phase_plan(spec: CouncilSpec) -> list[tuple[Phase, int]]:
    """Every phase the council runs, in order: propose, (critique, revise) x k, vote."""
    plan: list[tuple[Phase, int]] = [("propose", 0)]
    for r in range(1, spec.protocol.critique_rounds + 1):
        plan += [("critique", r), ("revise", r)]
    return [*plan, ("vote", 0)]


def phase_slots(spec: CouncilSpec, state: CouncilState, phase: Phase, round_: int) -> list[Slot]:
    """The batch of one planned phase."""
    if phase == "propose":
        return proposal_slots(spec)
    if phase == "critique":
        return critique_slots(spec, state, round_)
    if phase == "revise":
        return revise_slots(spec, state, round_)
    return vote_slots(spec, state)


# ---- prompts -----------------------------------------------------------------------------------


def proposal_slots(spec: CouncilSpec) -> list[Slot]:
    """The propose phase: one request per (task, agent), tasks outer, agents inner."""
    return [
        Slot(task=task, agent=agent, phase="propose", round=0,
             request=chat_request(spec, agent, task_context(task), "Propose a solution."))
        for task in spec.tasks
        for agent in spec.agents
    ]  # fmt: skip


def _others(spec: CouncilSpec, state: TaskState, agent_id: str) -> tuple[str, ...]:
    return tuple(a.id for a in spec.agents if a.id != agent_id and a.id in state.proposals)


def _open_tasks(spec: CouncilSpec, state: CouncilState) -> list[tuple[TaskSpec, TaskState]]:
    """Tasks whose critique rounds go on (not settled by early stop), in spec order."""
    return [(t, state.tasks[t.id]) for t in spec.tasks if not state.tasks[t.id].settled]


def critique_slots(spec: CouncilSpec, state: CouncilState, round_: int) -> list[Slot]:
    """Critique round ``round_``: each agent critiques the others' current proposals, for every
    task that is not settled."""
    signal = spec.protocol.no_objection_signal
    slots = []
    for task, ts in _open_tasks(spec, state):
        context = proposals_context(spec, task, ts, CURRENT_PROPOSALS)
        for agent in spec.agents:
            targets = _others(spec, ts, agent.id)
            if not targets:
                slots.append(_uncalled(task, agent, "critique", round_, NOTHING_TO_CRITIQUE))
                continue
            headings = ", ".join(f"### {t}" for t in targets)
            ask = (
                f"Critique each proposal except your own, under its own heading ({headings}). "
                f"Name concrete problems. If you have no objection to a proposal, write {signal} "
                "under its heading."
            )
            slots.append(
                Slot(task=task, agent=agent, phase="critique", round=round_,
                     request=chat_request(spec, agent, context, ask), candidates=targets)
            )  # fmt: skip
    return slots


def revise_slots(spec: CouncilSpec, state: CouncilState, round_: int) -> list[Slot]:
    """Revise after critique round ``round_``: each agent that received critique revises; the
    others end their slot uncalled (module docstring), also in a task settled by this round.

    The context is the critique round's (the task and every current proposal, the reviser's own
    among them), so the engine's prefix cache still holds it from the critique batch; only the
    critique addressed to the agent is new.
    """
    limit = spec.protocol.max_critique_chars
    slots = []
    for task in spec.tasks:
        ts = state.tasks[task.id]
        if ts.settled and ts.rounds_run != round_:
            continue  # settled in an earlier round: this round never started for the task
        received = ts.critiques.get(round_, {})
        context = proposals_context(spec, task, ts, CURRENT_PROPOSALS)
        for agent in spec.agents:
            notes = received.get(agent.id)
            if agent.id not in ts.proposals:
                slots.append(_uncalled(task, agent, "revise", round_, NOTHING_TO_REVISE))
                continue
            if ts.settled or not notes:
                why = NO_OBJECTIONS.format(round=round_) if ts.settled else NO_CRITIQUE.format(round=round_)
                slots.append(_uncalled(task, agent, "revise", round_, why, stands=ts.proposals[agent.id]))
                continue
            critique_text = "\n\n".join(f"From {critic}:\n{shorten(text, limit)}" for critic, text in notes)
            ask = (
                f"Your proposal is the one under ### {agent.id}. Critique you received:\n\n"
                f"{critique_text}\n\nWrite your revised proposal in full."
            )
            slots.append(Slot(task=task, agent=agent, phase="revise", round=round_,
                              request=chat_request(spec, agent, context, ask)))  # fmt: skip
    return slots


def vote_slots(spec: CouncilSpec, state: CouncilState) -> list[Slot]:
    """The vote phase: each agent scores the others' final proposals for each task (an agent
    with no other proposal to score ends its slot uncalled, with a failed event)."""
    lo, hi = spec.protocol.min_score, spec.protocol.max_score
    slots: list[Slot] = []
    for task in spec.tasks:
        ts = state.tasks[task.id]
        context = proposals_context(spec, task, ts, "The council's final proposals:")
        for turn, voter in enumerate(spec.agents):
            candidates = rotated(_others(spec, ts, voter.id), turn)
            if not candidates:
                slots.append(_uncalled(task, voter, "vote", 0, NOTHING_TO_VOTE_ON))
                continue
            # Placeholders, not numbers: small models copy an example's numbers verbatim.
            example = json.dumps({"scores": dict.fromkeys(candidates, "<score>")})
            ask = (
                f"Score each proposal except your own from {lo} (worst) to {hi} (best). "
                f"Answer with JSON only, in this form: {example}"
            )
            budget = vote_token_budget(candidates, spec.model.vote_max_tokens)
            top = VOTE_TOP_LOGPROBS if spec.protocol.scoring == "expected" else 0
            slots.append(
                Slot(task=task, agent=voter, phase="vote", round=0, candidates=candidates,
                     request=chat_request(spec, voter, context, ask, max_tokens=budget,
                                          json_schema=vote_schema(candidates, lo, hi), top_logprobs=top))
            )  # fmt: skip
    return slots


#: Alternatives per vote token for expected scores (vLLM's default cap on logprobs is 20).
VOTE_TOP_LOGPROBS = 20

NOTHING_TO_CRITIQUE = "nothing to critique: no other agent has a standing proposal for this task"
NOTHING_TO_REVISE = "nothing to revise: this agent's proposal for this task failed"
NOTHING_TO_VOTE_ON = "nothing to vote on: no other agent has a standing proposal for this task"
NO_CRITIQUE = "no critique was addressed to this proposal in round {round}: it stands unchanged"
NO_OBJECTIONS = "every critic had no objection in round {round}: the proposal stands unchanged"


def _uncalled(
    task: TaskSpec, agent: AgentSpec, phase: Phase, round_: int, reason: str, stands: str | None = None
) -> Slot:
    return Slot(task=task, agent=agent, phase=phase, round=round_, request=None, reason=reason, stands=stands)


# ---- completions -> events -> state --------------------------------------------------------------


def _common(slot: Slot, submission_id: str, spec: CouncilSpec) -> dict[str, Any]:
    return {
        "submission_id": submission_id,
        "council": spec.name,
        "task_id": slot.task.id,
        "phase": slot.phase,
        "round": slot.round,
        "agent_id": slot.agent.id,
        "role": slot.agent.role,
    }


def uncalled_event(slot: Slot, *, submission_id: str, spec: CouncilSpec) -> Outcome:
    """The event of a slot that needs no model call: an unchanged revision, or a failure that
    says why the agent had nothing to do."""
    common = _common(slot, submission_id, spec)
    if slot.stands is not None:
        return AgentResponseCompleted(
            **common, content=slot.stands, data={"unchanged": True, "reason": slot.reason}, finish_reason=None
        )
    return AgentResponseFailed(**common, reason=slot.reason)


def outcome_event(slot: Slot, completion: Completion, *, submission_id: str, spec: CouncilSpec) -> Outcome:
    """Turn one completion into its event: completed, or failed with the reason."""
    common = _common(slot, submission_id, spec)
    if not completion.ok:
        return AgentResponseFailed(**common, reason=completion.error or "unknown error")
    if not completion.text.strip():
        return AgentResponseFailed(**common, reason="empty response", content=completion.text)
    data: dict[str, Any] | None = None
    if slot.phase == "vote":
        try:
            scores = parse_vote(
                completion.text, slot.candidates, spec.protocol.min_score, spec.protocol.max_score
            )
        except InvalidVote as exc:
            return AgentResponseFailed(**common, reason=f"unparseable vote: {exc}", content=completion.text)
        data = {"scores": scores}
        if spec.protocol.scoring == "expected":
            lo, hi = spec.protocol.min_score, spec.protocol.max_score
            data["expected_scores"] = expected_scores(
                completion.text, completion.tokens, slot.candidates, lo, hi
            )
    elif slot.phase == "critique":
        data = {"targets": list(slot.candidates)}
    return AgentResponseCompleted(
        **common,
        content=completion.text,
        data=data,
        prompt_tokens=completion.prompt_tokens,
        output_tokens=completion.output_tokens,
        finish_reason=completion.finish_reason,
    )


def apply(
    spec: CouncilSpec, state: CouncilState, phase: Phase, round_: int, events: Sequence[Outcome]
) -> None:
    """Fold one phase's events into the state (and settle tasks whose critiques all agree)."""
    signal = spec.protocol.no_objection_signal.lower()
    for e in events:
        ts = state.tasks[e.task_id]
        ts.transcript.append(e.key)
        if not isinstance(e, AgentResponseCompleted):
            continue
        if phase in ("propose", "revise"):
            ts.proposals[e.agent_id] = e.content
        elif phase == "critique":
            targets = (e.data or {}).get("targets", [])
            for target, section in route_critique(e.content, targets).items():
                ts.critiques.setdefault(round_, {}).setdefault(target, []).append((e.agent_id, section))
        elif phase == "vote" and e.data:
            # Expected scores where the judge's probabilities were read, written ones otherwise.
            ts.votes[e.agent_id] = {**e.data["scores"], **(e.data.get("expected_scores") or {})}
    if phase == "critique":
        by_task: dict[str, list[Outcome]] = {}
        for e in events:
            by_task.setdefault(e.task_id, []).append(e)
        for task_id, task_events in by_task.items():
            ts = state.tasks[task_id]
            ts.rounds_run = round_
            # Agents that had nothing to critique neither object nor agree.
            critics = [e for e in task_events if getattr(e, "reason", None) != NOTHING_TO_CRITIQUE]
            if spec.protocol.early_stop and critics and no_objections(critics, ts, round_, signal):
                ts.settled = True
    if phase == "vote":
        # Voters: the agents that had another proposal to score (their slot was called).
        for e in events:
            if not (isinstance(e, AgentResponseFailed) and e.reason == NOTHING_TO_VOTE_ON):
                state.tasks[e.task_id].votes_expected += 1


def results(spec: CouncilSpec, state: CouncilState, *, submission_id: str) -> list[DeliberationCompleted]:
    """One ``council.deliberation.completed`` per task, in spec order."""
    out = []
    for task in spec.tasks:
        ts = state.tasks[task.id]
        out.append(
            rank_task(
                spec,
                task,
                ts.votes,
                votes_expected=ts.votes_expected,
                proposals={(task.id, a): text for a, text in ts.proposals.items()},
                submission_id=submission_id,
                rounds_run=ts.rounds_run,
                early_stopped=ts.settled,
                transcript=ts.transcript,
            )
        )
    return out
