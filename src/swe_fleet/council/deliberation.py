"""The deliberation loop: each phase one batch to the generator, every response published.

It runs over three ports, so it is backend- and transport-agnostic: a
:class:`~swe_fleet.llm.base.Generator`, a :class:`Publisher` (``publish_all``) and, optionally,
:class:`Checkpoints`. The council job's driver (:mod:`swe_fleet.driver.council_job`) plugs in
vLLM and JetStream; tests plug in fakes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from swe_fleet.council import protocol as council
from swe_fleet.council.state import CouncilState
from swe_fleet.errors import CheckpointMismatch, LLMError
from swe_fleet.events import AgentResponseCompleted, DeliberationCompleted
from swe_fleet.llm.base import Completion, Generator
from swe_fleet.spec import CouncilSpec

log = structlog.get_logger(__name__)


class Checkpoints(Protocol):
    """Where council state survives the driver (see :mod:`swe_fleet.nats.checkpoints`)."""

    async def load(self, submission_id: str) -> dict[str, Any] | None: ...

    async def save(self, submission_id: str, checkpoint: dict[str, Any], *, after: str = "") -> None: ...


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
    phase_requests: dict[str, int] = field(default_factory=dict)
    #: The last phase a previous run had completed, when this run resumed.
    resumed_after: str | None = None
    #: Errors of batches that failed as a whole (their agents got failed events).
    backend_errors: list[str] = field(default_factory=list)


async def run_deliberation(
    spec: CouncilSpec,
    *,
    submission_id: str,
    generator: Generator,
    publisher: Publisher,
    checkpoints: Checkpoints | None = None,
) -> DeliberationReport:
    """propose -> k x (critique -> revise) -> vote -> rank; one generator batch per phase
    across all tasks and agents; every response published before the next phase starts.

    With ``checkpoints``, the state is saved after each phase (once its events are published;
    never after a backend failure) and a run of the same submission resumes after the last
    saved phase. A phase that was cut short runs again and publishes under the same keys, so
    JetStream drops the duplicates within its duplicate window (at temperature 0 the texts are
    the same; at higher temperatures the rerun's texts are the ones the council continues with).
    """
    report = DeliberationReport(submission_id=submission_id)
    bound = log.bind(submission_id=submission_id, council=spec.name)
    state = CouncilState.start(spec)

    async def run_phase(slots: list[council.Slot]) -> None:
        if not slots:
            return
        phase, round_ = slots[0].phase, slots[0].round
        started = time.monotonic()
        called = [s for s in slots if s.request is not None]
        requests = [s.request for s in called if s.request is not None]
        completions: list[Completion] = []
        if requests:
            try:
                completions = list(await generator.generate(requests))
            except LLMError as exc:
                # The whole batch failed: every agent of it gets a failed event (no consumer
                # waits for a response that will not come) and the council goes on with what it has.
                report.backend_errors.append(str(exc))
                bound.error("phase.backend_failed", phase=phase, round=round_, error=str(exc))
                completions = [Completion(text="", error=f"LLM backend failed: {exc}")] * len(requests)
        answers = dict(zip((id(s) for s in called), completions, strict=True))
        events = [
            council.outcome_event(s, answers[id(s)], submission_id=submission_id, spec=spec)
            if s.request is not None
            else council.uncalled_event(s, submission_id=submission_id, spec=spec)
            for s in slots
        ]
        await publisher.publish_all(events)
        council.apply(spec, state, phase, round_, events)
        ok = sum(isinstance(e, AgentResponseCompleted) for e in events)
        bad = len(events) - ok
        report.completed += ok
        report.failed += bad
        name = f"{phase}" if phase in ("propose", "vote") else f"{phase}.{round_}"
        report.phase_seconds[name] = round(time.monotonic() - started, 3)
        report.phase_requests[name] = len(requests)
        bound.info("phase.done", phase=phase, round=round_, slots=len(slots), requests=len(requests),
                   completed=ok, failed=bad, seconds=report.phase_seconds[name])  # fmt: skip

    done: list[str] = []
    if checkpoints is not None:
        saved = await checkpoints.load(submission_id)
        if saved is not None:
            if saved.get("spec_hash") != spec.spec_hash():
                raise CheckpointMismatch(
                    f"the checkpoint of submission {submission_id!r} belongs to another spec "
                    f"(spec_hash {saved.get('spec_hash')!r}); resubmit under a new submission id",
                    submission_id=submission_id,
                )
            done = list(saved["done"])
            state = CouncilState.from_dict(saved["state"])
            report.resumed_after = done[-1] if done else None
            bound.info("council.resumed", after=report.resumed_after, phases_done=len(done))
    for phase, round_ in council.phase_plan(spec):
        name = phase if phase in ("propose", "vote") else f"{phase}.{round_}"
        if name in done:
            continue
        await run_phase(council.phase_slots(spec, state, phase, round_))
        done.append(name)
        # After a backend failure the state is not worth resuming from: a retry redoes the
        # phases from the last good checkpoint instead of skipping them.
        if checkpoints is not None and not report.backend_errors:
            await checkpoints.save(
                submission_id,
                {"spec_hash": spec.spec_hash(), "done": done, "state": state.to_dict()},
                after=name,
            )

    report.results = council.results(spec, state, submission_id=submission_id)
    await publisher.publish_all(report.results)
    for r in report.results:
        bound.info("task.ranked", task_id=r.task_id, outcome=r.outcome, winner=r.winner, tied=r.tied,
                   reason=r.reason, rounds=r.rounds_run, early_stopped=r.early_stopped,
                   votes=f"{r.votes_counted}/{r.votes_expected}", quorum=r.quorum)  # fmt: skip
    return report
