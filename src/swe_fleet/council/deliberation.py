"""The deliberation loop: the phases of every task, through the generator, every response published.

Two schedules (``protocol.schedule``): **pipelined** (default), one coroutine per task, each
task going to its next phase the moment its own previous phase is published, so requests of
all tasks are in flight together and the engine's running batch stays full; a task's
``council.deliberation.completed`` is published as soon as that task is done. **barrier**, one
generator batch per phase across all tasks, every task waiting for the slowest.

It runs over three ports, so it is backend- and transport-agnostic: a
:class:`~swe_fleet.llm.base.Generator`, a :class:`Publisher` (``publish_all``) and, optionally,
:class:`Checkpoints`. The council job's driver (:mod:`swe_fleet.driver.council_job`) plugs in
vLLM and JetStream; tests plug in fakes.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from swe_fleet._tasks import cancel_and_wait
from swe_fleet.council import protocol as council
from swe_fleet.council.state import CouncilState, TaskState
from swe_fleet.errors import CheckpointMismatch, LLMError
from swe_fleet.events import AgentResponseCompleted, DeliberationCompleted, Phase
from swe_fleet.llm.base import Completion, Generator
from swe_fleet.spec import CouncilSpec, TaskSpec

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
    #: Per phase name (``propose``, ``critique.1``, ...): from its first request to its last
    #: event, across tasks (pipelined phases of different tasks overlap).
    phase_seconds: dict[str, float] = field(default_factory=dict)
    phase_requests: dict[str, int] = field(default_factory=dict)
    #: Per task, seconds from the start of the run until its result was published.
    task_seconds: dict[str, float] = field(default_factory=dict)
    #: Per task, the last phase a previous run had completed, when this run resumed.
    resumed_after: dict[str, str] = field(default_factory=dict)
    #: Errors of batches that failed as a whole (their agents got failed events).
    backend_errors: list[str] = field(default_factory=list)


def phase_name(phase: str, round_: int) -> str:
    """``propose``, ``critique.1``, ``revise.1``, ..., ``vote``: how checkpoints and reports name a phase."""
    return phase if phase in ("propose", "vote") else f"{phase}.{round_}"


async def run_deliberation(
    spec: CouncilSpec,
    *,
    submission_id: str,
    generator: Generator,
    publisher: Publisher,
    checkpoints: Checkpoints | None = None,
) -> DeliberationReport:
    """propose -> k x (critique -> revise) -> vote -> rank, for every task, on the spec's
    schedule (module docstring); every response published before its task's next phase starts.

    With ``checkpoints``, the state is saved each time a task finishes a phase (once its events
    are published), and a run of the same submission resumes each task after its own last saved
    phase. A task whose batch failed in the backend keeps its last good phase in the checkpoint:
    a retry redoes that task from there (its failed phase and everything after it). A phase that
    was cut short runs again and publishes under the same keys, so JetStream drops the duplicates
    within its duplicate window (at temperature 0 the texts are the same; at higher temperatures
    the rerun's texts are the ones the council continues with).
    """
    run = _Run(spec, submission_id, generator, publisher, checkpoints)
    await run.resume()
    if spec.protocol.schedule == "pipelined":
        await _all_or_first_error([run.whole_task(task) for task in spec.tasks])
    else:
        for phase, round_ in council.phase_plan(spec):
            name = phase_name(phase, round_)
            await run.phase([t for t in spec.tasks if name not in run.done[t.id]], phase, round_)
        await run.publish_results(spec.tasks)
    order = {t.id: i for i, t in enumerate(spec.tasks)}
    run.report.results.sort(key=lambda r: order[r.task_id])
    return run.report


class _Run:
    """One run of a council: its state, what each task has done, and the report."""

    def __init__(
        self,
        spec: CouncilSpec,
        submission_id: str,
        generator: Generator,
        publisher: Publisher,
        checkpoints: Checkpoints | None,
    ) -> None:
        self.spec = spec
        self.submission_id = submission_id
        self.generator = generator
        self.publisher = publisher
        self.checkpoints = checkpoints
        self.report = DeliberationReport(submission_id=submission_id)
        self.state = CouncilState.start(spec)
        #: Per task, the phases it has done (published and applied), in order.
        self.done: dict[str, list[str]] = {t.id: [] for t in spec.tasks}
        #: Per task, what a checkpoint holds: its done phases and state after its last phase
        #: without a backend failure (a task that had one stops moving here).
        self.good: dict[str, tuple[list[str], dict[str, Any]]] = {}
        self.broken: set[str] = set()
        self.log = log.bind(submission_id=submission_id, council=spec.name)
        self.started = time.monotonic()
        self._phase_span: dict[str, tuple[float, float]] = {}
        self._saving = asyncio.Lock()

    async def resume(self) -> None:
        """Load the submission's checkpoint, when there is one, and continue from it."""
        if self.checkpoints is None:
            return
        saved = await self.checkpoints.load(self.submission_id)
        if saved is None:
            return
        spec = self.spec
        if saved.get("spec_hash") != spec.spec_hash():
            raise CheckpointMismatch(
                f"the checkpoint of submission {self.submission_id!r} belongs to another spec "
                f"(spec_hash {saved.get('spec_hash')!r}); resubmit under a new submission id",
                submission_id=self.submission_id,
            )
        done = saved["done"]
        if isinstance(done, list):  # a checkpoint of a barrier-only version: every task did these
            done = {t.id: list(done) for t in spec.tasks}
        states: dict[str, Any] = saved["state"]
        for tid in self.done:
            if tid in states and done.get(tid):
                self.done[tid] = list(done[tid])
                self.state.tasks[tid] = TaskState.from_dict(states[tid])
                self.good[tid] = (list(done[tid]), states[tid])
        self.report.resumed_after = {tid: phases[-1] for tid, phases in self.done.items() if phases}
        self.log.info("council.resumed", after=self.report.resumed_after)

    async def whole_task(self, task: TaskSpec) -> None:
        """The pipelined schedule of one task: its phases one after another, then its result."""
        for phase, round_ in council.phase_plan(self.spec):
            if phase_name(phase, round_) not in self.done[task.id]:
                await self.phase([task], phase, round_)
        await self.publish_results([task])

    async def phase(self, tasks: list[TaskSpec], phase: Phase, round_: int) -> None:
        """One phase of ``tasks``: one generator call, every slot's event published, the state
        folded, the phase marked done for those tasks and checkpointed."""
        if not tasks:
            return
        narrowed = {t.id: self.spec.for_task(t) for t in tasks}
        name = phase_name(phase, round_)
        slots = [s for t in tasks for s in council.phase_slots(narrowed[t.id], self.state, phase, round_)]
        started = time.monotonic()
        called = [s for s in slots if s.request is not None]
        requests = [s.request for s in called if s.request is not None]
        completions: list[Completion] = []
        failed_batch = False
        if requests:
            try:
                completions = list(await self.generator.generate(requests))
            except LLMError as exc:
                # The whole batch failed: every agent of it gets a failed event (no consumer
                # waits for a response that will not come) and the council goes on with what it has.
                failed_batch = True
                self.report.backend_errors.append(str(exc))
                self.log.error("phase.backend_failed", phase=phase, round=round_,
                               tasks=[t.id for t in tasks], error=str(exc))  # fmt: skip
                completions = [Completion(text="", error=f"LLM backend failed: {exc}")] * len(requests)
        answers = dict(zip((id(s) for s in called), completions, strict=True))
        sid = self.submission_id
        events = [
            council.outcome_event(s, answers[id(s)], submission_id=sid, spec=narrowed[s.task.id])
            if s.request is not None
            else council.uncalled_event(s, submission_id=sid, spec=narrowed[s.task.id])
            for s in slots
        ]
        await self.publisher.publish_all(events)
        council.apply(self.spec, self.state, phase, round_, events)
        for t in tasks:
            self.done[t.id].append(name)
            if failed_batch:
                # Not worth resuming from: a retry redoes this task from its last good phase.
                self.broken.add(t.id)
            elif t.id not in self.broken:
                self.good[t.id] = (list(self.done[t.id]), copy.deepcopy(self.state.tasks[t.id].to_dict()))
        ok = sum(isinstance(e, AgentResponseCompleted) for e in events)
        self.report.completed += ok
        self.report.failed += len(events) - ok
        ended = time.monotonic()
        first, _ = self._phase_span.get(name, (started, ended))
        self._phase_span[name] = (min(first, started), ended)
        self.report.phase_seconds[name] = round(ended - self._phase_span[name][0], 3)
        self.report.phase_requests[name] = self.report.phase_requests.get(name, 0) + len(requests)
        self.log.info("phase.done", phase=phase, round=round_, tasks=len(tasks), slots=len(slots),
                      requests=len(requests), completed=ok, failed=len(events) - ok,
                      seconds=round(ended - started, 3))  # fmt: skip
        if self.checkpoints is not None and not failed_batch:
            await self._save(after=name if len(tasks) > 1 else f"{name} of {tasks[0].id}")

    async def _save(self, *, after: str) -> None:
        assert self.checkpoints is not None
        # One save at a time, each with every task's last good phase as it stands.
        async with self._saving:
            snapshot = {
                "spec_hash": self.spec.spec_hash(),
                "done": {tid: done for tid, (done, _) in self.good.items()},
                "state": {tid: state for tid, (_, state) in self.good.items()},
            }
            await self.checkpoints.save(self.submission_id, snapshot, after=after)

    async def publish_results(self, tasks: list[TaskSpec]) -> None:
        """The ``council.deliberation.completed`` of each of ``tasks`` (ranked now)."""
        results = [
            r
            for t in tasks
            for r in council.results(self.spec.for_task(t), self.state, submission_id=self.submission_id)
        ]
        await self.publisher.publish_all(results)
        elapsed = round(time.monotonic() - self.started, 3)
        for r in results:
            self.report.results.append(r)
            self.report.task_seconds[r.task_id] = elapsed
            self.log.info("task.ranked", task_id=r.task_id, outcome=r.outcome, winner=r.winner, tied=r.tied,
                          reason=r.reason, rounds=r.rounds_run, early_stopped=r.early_stopped,
                          votes=f"{r.votes_counted}/{r.votes_expected}", quorum=r.quorum,
                          seconds=elapsed)  # fmt: skip


async def _all_or_first_error(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` concurrently; on the first exception cancel the others and raise it (as
    itself, not in a group: the driver tells publish failures from the rest by type)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        # Let the cancelled ones unwind (their exceptions are not news: the first one is).
        await cancel_and_wait(tasks)
    for t in tasks:
        if t in done and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    if any(t.cancelled() for t in done):  # cancelled from elsewhere: not a finished council
        raise asyncio.CancelledError
