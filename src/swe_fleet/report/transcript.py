"""A council's transcript, built from its events (and, when the results store has it, the spec it
ran): per task, who proposed what, which critique section went to whom, each revision next to
what it revised, each vote, the outcome, and when each phase ended.

Pure: no I/O. ``swe-fleet report`` reads the events and the record and renders this
(:mod:`swe_fleet.report.markdown`, :mod:`swe_fleet.report.html`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from swe_fleet.council.deliberation import phase_name
from swe_fleet.council.routing import route_critique
from swe_fleet.events import (
    AgentResponseCompleted,
    AgentResponseFailed,
    AnyEvent,
    CouncilJobFailed,
    CouncilJobStatus,
    DeliberationCompleted,
)

Response = AgentResponseCompleted | AgentResponseFailed
JobEvent = CouncilJobFailed | CouncilJobStatus


@dataclass
class Revision:
    """One agent's revision in one round, beside the text it revised."""

    event: Response
    #: The text it revised: the agent's proposal (round 1) or its previous revision.
    before: str | None


@dataclass
class Round:
    """One critique round of a task: each critic's critique split by whom it addressed, and
    each author's revision."""

    number: int
    critiques: list[Response] = field(default_factory=list)
    #: routed[critic][target]: the section of the critic's critique that went to the target.
    routed: dict[str, dict[str, str]] = field(default_factory=dict)
    revisions: list[Revision] = field(default_factory=list)


@dataclass
class PhaseTiming:
    """When a task's phase ended (seconds since the council's first event) and how long it took
    since the task's previous phase ended (None for its first phase: when it started is not in
    the events)."""

    name: str
    ended_s: float
    seconds: float | None


@dataclass
class TaskTranscript:
    task_id: str
    #: The task's text (None when the spec is not known: the results store had no record).
    prompt: str | None
    agents: list[str]
    proposals: list[Response] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    votes: list[Response] = field(default_factory=list)
    result: DeliberationCompleted | None = None
    timings: list[PhaseTiming] = field(default_factory=list)

    @property
    def events(self) -> list[AnyEvent]:
        """Every event of this task in the transcript (responses, then the result)."""
        found: list[AnyEvent] = [*self.proposals]
        for r in self.rounds:
            found += [*r.critiques, *(v.event for v in r.revisions)]
        found += self.votes
        return found + ([self.result] if self.result is not None else [])


@dataclass
class Transcript:
    submission_id: str
    council: str
    tasks: list[TaskTranscript]
    #: The job's own events (status changes, failed attempts), in the order they were stored.
    job_events: list[JobEvent]
    #: Roles by agent id (from the spec, else from the events).
    roles: dict[str, str]
    #: Scores run from ``min_score`` to ``max_score`` (the spec's protocol; 1-10 without one).
    score_range: tuple[int, int] = (1, 10)
    #: The spec is known (from the results store): prompts, agents and planned phases are complete.
    has_spec: bool = False

    @property
    def events(self) -> list[AnyEvent]:
        return [e for t in self.tasks for e in t.events] + list(self.job_events)


def build_transcript(
    submission_id: str, events: Sequence[AnyEvent], spec: dict[str, Any] | None = None
) -> Transcript:
    """The transcript of ``submission_id`` from its events (stream order), and its spec when known
    (``CouncilSpec.model_dump(mode="json")``: task texts, agents and roles, score range).

    An event stored twice (a job retried under the same submission) counts once: the last one
    stored wins, as a consumer deduplicating by key would see it.
    """
    latest: dict[str, AnyEvent] = {}
    for e in events:
        if e.submission_id == submission_id:
            latest.pop(e.key, None)
            latest[e.key] = e
    mine = list(latest.values())
    spec_tasks = {t["id"]: t for t in (spec or {}).get("tasks", [])}
    spec_agents = [a["id"] for a in (spec or {}).get("agents", [])]
    roles = {a["id"]: a["role"] for a in (spec or {}).get("agents", [])}
    for e in mine:
        if isinstance(e, AgentResponseCompleted | AgentResponseFailed):
            roles.setdefault(e.agent_id, e.role)
    task_ids = list(spec_tasks)
    for e in mine:
        if e.task_id != "*" and e.task_id not in task_ids:
            task_ids.append(e.task_id)
    start = min((e.created_at for e in mine), default=0.0)
    tasks = [
        _task(
            tid,
            spec_tasks.get(tid, {}).get("prompt"),
            spec_tasks.get(tid, {}).get("agents") or spec_agents,
            [e for e in mine if e.task_id == tid],
            start,
        )
        for tid in task_ids
    ]
    protocol = (spec or {}).get("protocol", {})
    council = (spec or {}).get("name") or next((e.council for e in mine), "council")
    return Transcript(
        submission_id=submission_id,
        council=council,
        tasks=tasks,
        job_events=[e for e in mine if isinstance(e, CouncilJobFailed | CouncilJobStatus)],
        roles=roles,
        score_range=(int(protocol.get("min_score", 1)), int(protocol.get("max_score", 10))),
        has_spec=spec is not None,
    )


def _task(
    task_id: str, prompt: str | None, agents: list[str], events: list[AnyEvent], start: float
) -> TaskTranscript:
    responses = [e for e in events if isinstance(e, AgentResponseCompleted | AgentResponseFailed)]
    order = {a: i for i, a in enumerate(agents)}
    for e in responses:
        if e.agent_id not in order:
            order[e.agent_id] = len(order)
            agents = [*agents, e.agent_id]
    responses.sort(key=lambda e: (e.round, order[e.agent_id]))
    t = TaskTranscript(task_id=task_id, prompt=prompt, agents=list(agents))
    t.proposals = [e for e in responses if e.phase == "propose"]
    t.votes = [e for e in responses if e.phase == "vote"]
    latest_text = {e.agent_id: e.content for e in t.proposals if isinstance(e, AgentResponseCompleted)}
    for n in sorted({e.round for e in responses if e.phase in ("critique", "revise")}):
        r = Round(number=n, critiques=[e for e in responses if e.phase == "critique" and e.round == n])
        for c in r.critiques:
            if isinstance(c, AgentResponseCompleted):
                targets = (c.data or {}).get("targets") or [a for a in t.agents if a != c.agent_id]
                r.routed[c.agent_id] = route_critique(c.content, targets)
        for e in responses:
            if e.phase == "revise" and e.round == n:
                r.revisions.append(Revision(event=e, before=latest_text.get(e.agent_id)))
                if isinstance(e, AgentResponseCompleted):
                    latest_text[e.agent_id] = e.content
        t.rounds.append(r)
    results = [e for e in events if isinstance(e, DeliberationCompleted)]
    t.result = results[-1] if results else None
    t.timings = _timings([*responses, *results], start)
    return t


def _timings(events: Sequence[AnyEvent], start: float) -> list[PhaseTiming]:
    """Per phase of a task, in the order they ended: when it ended and how long since the last."""
    ended: dict[str, float] = {}
    for e in events:
        name = (
            phase_name(e.phase, e.round)
            if isinstance(e, AgentResponseCompleted | AgentResponseFailed)
            else "result"
        )
        ended[name] = max(ended.get(name, e.created_at), e.created_at)
    timings: list[PhaseTiming] = []
    previous: float | None = None
    for name, at in sorted(ended.items(), key=lambda kv: kv[1]):
        took = None if previous is None else round(at - previous, 3)
        timings.append(PhaseTiming(name=name, ended_s=round(at - start, 3), seconds=took))
        previous = at
    return timings
