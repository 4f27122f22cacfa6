"""The deliberation protocol as pure functions: spec + state -> batch of chat requests;
completions -> events and new state; votes -> ranking.

Protocol (this version): **propose** (every agent answers every task) -> **vote** (every agent
scores every *other* agent's proposal for the same task, as JSON) -> **rank**.

Ranking rule: candidates are ordered by the mean score they received (higher first); ties go
to the candidate with more counted votes, then to the one listed first in the spec. A candidate
whose proposal failed, or that received no valid vote, ranks after every scored candidate with
``mean_score=None``. The winner is the first-ranked candidate with a score (None if nobody has one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from swe_fleet.chat import ChatRequest, Completion
from swe_fleet.events import (
    AgentResponseCompleted,
    AgentResponseFailed,
    DeliberationCompleted,
    Phase,
    RankedAgent,
)
from swe_fleet.spec import AgentSpec, CouncilSpec, TaskSpec


@dataclass(frozen=True)
class Slot:
    """One (task, agent, phase, round) position and the request that fills it."""

    task: TaskSpec
    agent: AgentSpec
    phase: Phase
    round: int
    request: ChatRequest
    #: For votes: the agent ids being scored, in prompt order.
    candidates: tuple[str, ...] = ()


Proposals = Mapping[tuple[str, str], str]
"""(task_id, agent_id) -> proposal text, for proposals that succeeded."""

Votes = Mapping[str, Mapping[str, Mapping[str, int]]]
"""task_id -> voter -> candidate -> score, for votes that counted."""


def proposal_slots(spec: CouncilSpec) -> list[Slot]:
    """The propose phase: one request per (task, agent), tasks outer, agents inner."""
    return [
        Slot(
            task=task,
            agent=agent,
            phase="propose",
            round=0,
            request=ChatRequest(
                messages=(
                    {"role": "system", "content": agent.resolved_system_prompt()},
                    {
                        "role": "user",
                        "content": (
                            f"Task {task.id}:\n{task.prompt}\n\n"
                            f"As the council's {agent.role}, propose a solution."
                        ),
                    },
                ),
                max_tokens=spec.model.max_tokens,
                temperature=spec.model.temperature,
                seed=spec.model.seed,
            ),
        )
        for task in spec.tasks
        for agent in spec.agents
    ]


def vote_schema(candidates: Sequence[str], lo: int, hi: int) -> dict[str, Any]:
    """JSON schema of one vote: ``{"scores": {candidate: int in [lo, hi]}}``, every candidate."""
    return {
        "type": "object",
        "properties": {
            "scores": {
                "type": "object",
                "properties": {c: {"type": "integer", "minimum": lo, "maximum": hi} for c in candidates},
                "required": list(candidates),
                "additionalProperties": False,
            }
        },
        "required": ["scores"],
        "additionalProperties": False,
    }


def vote_slots(spec: CouncilSpec, proposals: Proposals) -> list[Slot]:
    """The vote phase: each agent scores the other agents' successful proposals for each task.

    An agent with no other proposal to score (all others failed) gets no vote slot.
    """
    lo, hi = spec.protocol.min_score, spec.protocol.max_score
    slots: list[Slot] = []
    for task in spec.tasks:
        for voter in spec.agents:
            candidates = tuple(a.id for a in spec.agents if a.id != voter.id and (task.id, a.id) in proposals)
            if not candidates:
                continue
            listing = "\n\n".join(f"### Proposal by {c}\n{proposals[(task.id, c)]}" for c in candidates)
            # Placeholders, not numbers: small models copy an example's numbers verbatim.
            example = json.dumps({"scores": dict.fromkeys(candidates, "<score>")})
            slots.append(
                Slot(
                    task=task,
                    agent=voter,
                    phase="vote",
                    round=0,
                    candidates=candidates,
                    request=ChatRequest(
                        messages=(
                            {"role": "system", "content": voter.resolved_system_prompt()},
                            {
                                "role": "user",
                                "content": (
                                    f"Task {task.id}:\n{task.prompt}\n\n{listing}\n\n"
                                    f"Score each proposal from {lo} (worst) to {hi} (best). "
                                    f"Answer with JSON only, in this form: {example}"
                                ),
                            },
                        ),
                        max_tokens=spec.model.vote_max_tokens,
                        temperature=spec.model.temperature,
                        seed=spec.model.seed,
                        json_schema=vote_schema(candidates, lo, hi),
                    ),
                )
            )
    return slots


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_vote(text: str, candidates: Sequence[str], lo: int, hi: int) -> dict[str, int]:
    """Read a vote from model output, robustly.

    Accepts ``{"scores": {...}}`` or a flat ``{candidate: score}`` object, optionally wrapped in
    prose or a code fence. Integral floats (``7.0``) count as integers.

    Raises:
        ValueError: no JSON object, a candidate missing, a score not a number or out of range.
    """
    match = _JSON_OBJECT.search(text)
    if not match:
        raise ValueError("no JSON object in the vote")
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise ValueError(f"vote is not valid JSON: {exc.msg}") from None
    if isinstance(obj, dict) and isinstance(obj.get("scores"), dict):
        obj = obj["scores"]
    if not isinstance(obj, dict):
        raise ValueError("vote JSON is not an object")
    scores: dict[str, int] = {}
    for cand in candidates:
        if cand not in obj:
            raise ValueError(f"vote has no score for {cand!r}")
        value = obj[cand]
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ValueError(f"score for {cand!r} is not an integer: {value!r}")
        if not lo <= int(value) <= hi:
            raise ValueError(f"score for {cand!r} is {value}, outside {lo}..{hi}")
        scores[cand] = int(value)
    return scores


Outcome = AgentResponseCompleted | AgentResponseFailed


def outcome_event(slot: Slot, completion: Completion, *, submission_id: str, spec: CouncilSpec) -> Outcome:
    """Turn one completion into its event: completed, or failed with the reason."""
    common: dict[str, Any] = {
        "submission_id": submission_id,
        "council": spec.name,
        "task_id": slot.task.id,
        "phase": slot.phase,
        "round": slot.round,
        "agent_id": slot.agent.id,
        "role": slot.agent.role,
    }
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
        except ValueError as exc:
            return AgentResponseFailed(**common, reason=f"unparseable vote: {exc}", content=completion.text)
        data = {"scores": scores}
    return AgentResponseCompleted(
        **common,
        content=completion.text,
        data=data,
        prompt_tokens=completion.prompt_tokens,
        output_tokens=completion.output_tokens,
        finish_reason=completion.finish_reason,
    )


def collect_proposals(events: Sequence[Outcome]) -> dict[tuple[str, str], str]:
    """(task_id, agent_id) -> text for every completed proposal."""
    return {
        (e.task_id, e.agent_id): e.content
        for e in events
        if isinstance(e, AgentResponseCompleted) and e.phase == "propose"
    }


def collect_votes(events: Sequence[Outcome]) -> dict[str, dict[str, dict[str, int]]]:
    """task_id -> voter -> scores, for every vote that counted."""
    votes: dict[str, dict[str, dict[str, int]]] = {}
    for e in events:
        if isinstance(e, AgentResponseCompleted) and e.phase == "vote" and e.data:
            votes.setdefault(e.task_id, {})[e.agent_id] = dict(e.data["scores"])
    return votes


def rank_task(
    spec: CouncilSpec,
    task: TaskSpec,
    votes: Mapping[str, Mapping[str, int]],
    *,
    votes_expected: int,
    proposals: Proposals,
    submission_id: str,
) -> DeliberationCompleted:
    """Aggregate one task's votes into its ranking (rule in the module docstring)."""
    order = {a.id: i for i, a in enumerate(spec.agents)}
    received: dict[str, list[int]] = {a.id: [] for a in spec.agents}
    for ballot in votes.values():
        for cand, score in ballot.items():
            received[cand].append(score)

    def sort_key(agent_id: str) -> tuple[int, float, int, int]:
        got = received[agent_id]
        if not got:
            return (1, 0.0, 0, order[agent_id])
        return (0, -sum(got) / len(got), -len(got), order[agent_id])

    ranked_ids = sorted(received, key=sort_key)
    ranking = [
        RankedAgent(
            agent_id=aid,
            rank=i + 1,
            mean_score=round(sum(received[aid]) / len(received[aid]), 4) if received[aid] else None,
            votes=len(received[aid]),
        )
        for i, aid in enumerate(ranked_ids)
    ]
    winner = ranking[0].agent_id if ranking and ranking[0].mean_score is not None else None
    return DeliberationCompleted(
        submission_id=submission_id,
        council=spec.name,
        task_id=task.id,
        winner=winner,
        ranking=ranking,
        scores={voter: dict(ballot) for voter, ballot in votes.items()},
        votes_counted=len(votes),
        votes_expected=votes_expected,
        winning_proposal=proposals.get((task.id, winner)) if winner else None,
    )
