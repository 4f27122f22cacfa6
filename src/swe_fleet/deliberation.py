"""Runs one council: each phase is one batch to the generator, every response is published.

This is the body of the job driver (``jobs/council.py``); it is backend- and transport-agnostic
(any :class:`~swe_fleet.chat.Generator`, any publisher with ``publish_all``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from swe_fleet import council
from swe_fleet.chat import Generator
from swe_fleet.events import AgentResponseCompleted, AgentResponseFailed, DeliberationCompleted
from swe_fleet.spec import CouncilSpec

log = structlog.get_logger(__name__)


class Publisher(Protocol):
    async def publish_all(self, events: Sequence[Any], concurrency: int = 64) -> Sequence[Any]: ...


@dataclass
class DeliberationReport:
    """What one run produced (returned to the job driver, logged at the end)."""

    submission_id: str
    results: list[DeliberationCompleted] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)


async def run_deliberation(
    spec: CouncilSpec, *, submission_id: str, generator: Generator, publisher: Publisher
) -> DeliberationReport:
    """Propose -> vote -> rank, one generator batch per phase across all tasks and agents."""
    report = DeliberationReport(submission_id=submission_id)
    bound = log.bind(submission_id=submission_id, council=spec.name)

    async def run_phase(slots: list[council.Slot]) -> list[council.Outcome]:
        phase = slots[0].phase if slots else "?"
        started = time.monotonic()
        completions = await generator.generate([s.request for s in slots])
        events = [
            council.outcome_event(s, c, submission_id=submission_id, spec=spec)
            for s, c in zip(slots, completions, strict=True)
        ]
        await publisher.publish_all(events)
        ok = sum(isinstance(e, AgentResponseCompleted) for e in events)
        bad = sum(isinstance(e, AgentResponseFailed) for e in events)
        report.completed += ok
        report.failed += bad
        report.phase_seconds[phase] = round(time.monotonic() - started, 3)
        bound.info(
            "phase.done",
            phase=phase,
            requests=len(slots),
            completed=ok,
            failed=bad,
            seconds=report.phase_seconds[phase],
        )
        return events

    proposals_events = await run_phase(council.proposal_slots(spec))
    proposals = council.collect_proposals(proposals_events)
    vote_slots = council.vote_slots(spec, proposals)
    vote_events = await run_phase(vote_slots) if vote_slots else []
    votes = council.collect_votes(vote_events)

    for task in spec.tasks:
        expected = sum(1 for s in vote_slots if s.task.id == task.id)
        report.results.append(
            council.rank_task(
                spec,
                task,
                votes.get(task.id, {}),
                votes_expected=expected,
                proposals=proposals,
                submission_id=submission_id,
            )
        )
    await publisher.publish_all(report.results)
    for r in report.results:
        bound.info(
            "task.ranked",
            task_id=r.task_id,
            winner=r.winner,
            votes=f"{r.votes_counted}/{r.votes_expected}",
        )
    return report
