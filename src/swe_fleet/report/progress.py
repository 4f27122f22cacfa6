"""A council's progress as a grid of tasks x phases, folded from its events as they come
(``swe-fleet watch``, and ``swe-fleet run`` in a terminal). Pure: the CLI feeds it events and
draws it.

Each cell is one task's phase: how many of its slots completed or failed, their output tokens,
and a state: ``waiting`` (an earlier phase of the task is not done), ``running`` (its turn: the
task's previous phase is done, or some of its slots have their events), ``done`` (every slot
completed), ``failed`` (every slot has its event, some failed), ``skipped`` (a critique round
the task did not need: early stop). With the spec (from the results store, or the one the caller
submitted) every planned cell is there from the start; without it, the grid grows with the
events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from swe_fleet.council.deliberation import phase_name
from swe_fleet.events import (
    TERMINAL_JOB_STATES,
    AgentResponseCompleted,
    AgentResponseFailed,
    AnyEvent,
    CouncilJobFailed,
    CouncilJobStatus,
    DeliberationCompleted,
)
from swe_fleet.report.words import task_outcome

CellState = Literal["waiting", "running", "done", "failed", "skipped"]


@dataclass
class Cell:
    """One task's phase."""

    #: Slots planned (the task's agents); 0 when not known yet.
    planned: int
    completed: int = 0
    failed: int = 0
    tokens: int = 0
    #: When its last event was stored (the event's ``created_at``).
    ended_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.planned > 0 and self.completed + self.failed >= self.planned


@dataclass
class TaskProgress:
    task_id: str
    agents: list[str]
    cells: dict[str, Cell] = field(default_factory=dict)
    result: DeliberationCompleted | None = None


def planned_phases(critique_rounds: int) -> list[str]:
    """Every phase name a council with ``critique_rounds`` plans, in order."""
    rounds = [name for r in range(1, critique_rounds + 1) for name in (f"critique.{r}", f"revise.{r}")]
    return ["propose", *rounds, "vote"]


def _order(name: str) -> tuple[int, int]:
    """propose, critique.1, revise.1, critique.2, ..., vote."""
    head, _, n = name.partition(".")
    if head == "propose":
        return (0, 0)
    if head == "vote":
        return (2, 0)
    return (1, int(n or 0) * 2 + (head == "revise"))


class CouncilProgress:
    """Fold a council's events into its grid (see the module docstring)."""

    def __init__(self, spec: dict[str, Any] | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.phases: list[str] = []
        self.tasks: dict[str, TaskProgress] = {}
        #: The job ended without every result (failed or stopped): what it said.
        self.job_ended: str | None = None
        self.first_at: float | None = None
        self.planned = False
        if spec is not None:
            self.plan(spec)

    def plan(self, spec: dict[str, Any]) -> None:
        """Draw every planned cell of ``spec`` (``CouncilSpec.model_dump(mode="json")``), keeping
        what events already counted: learnt late, when the watch began before the job stored it."""
        self.planned = True
        planned = planned_phases(int(spec.get("protocol", {}).get("critique_rounds", 1)))
        self.phases = sorted(set(self.phases) | set(planned), key=_order)
        every = [a["id"] for a in spec.get("agents", [])]
        seen = self.tasks
        self.tasks = {}
        for t in spec.get("tasks", []):
            agents = [a for a in every if a in t["agents"]] if t.get("agents") else every
            task = seen.pop(t["id"], None) or TaskProgress(t["id"], [])
            task.agents = agents + [a for a in task.agents if a not in agents]
            for name in planned:
                task.cells.setdefault(name, Cell(planned=0)).planned = len(task.agents)
            self.tasks[t["id"]] = task
        self.tasks.update(seen)  # tasks the spec does not name (none, unless it is another council's)

    @property
    def done(self) -> bool:
        """Every task has its result, or the job ended for good."""
        if self.job_ended is not None:
            return True
        return bool(self.tasks) and all(t.result is not None for t in self.tasks.values())

    def apply(self, event: AnyEvent) -> None:
        """Fold one event in (events seen twice change nothing that was not already counted)."""
        self.first_at = min(self.first_at or event.created_at, event.created_at)
        if isinstance(event, CouncilJobFailed):
            self.job_ended = f"job failed: {event.reason}"
            return
        if isinstance(event, CouncilJobStatus):
            if event.state in TERMINAL_JOB_STATES and event.state != "succeeded":
                self.job_ended = f"job {event.state}" + (f": {event.message}" if event.message else "")
            return
        task = self.tasks.get(event.task_id)
        if task is None:
            task = self.tasks[event.task_id] = TaskProgress(event.task_id, [])
        if isinstance(event, DeliberationCompleted):
            task.result = event
            return
        name = phase_name(event.phase, event.round)
        if name not in self.phases:
            self.phases = sorted([*self.phases, name], key=_order)
        if event.agent_id not in task.agents:
            task.agents.append(event.agent_id)
            for cell in task.cells.values():
                cell.planned = max(cell.planned, len(task.agents))
        cell = task.cells.setdefault(name, Cell(planned=len(task.agents)))
        if isinstance(event, AgentResponseCompleted):
            cell.completed += 1
            cell.tokens += event.output_tokens
        elif isinstance(event, AgentResponseFailed):
            cell.failed += 1
        cell.ended_at = max(cell.ended_at or event.created_at, event.created_at)

    def state(self, task: TaskProgress, name: str) -> CellState:
        cell = task.cells.get(name)
        if cell is not None and cell.finished:
            return "failed" if cell.failed else "done"
        if cell is not None and cell.completed + cell.failed:
            return "running"
        if task.result is not None:
            return "skipped"
        before = self.phases[: self.phases.index(name)]
        previous = task.cells.get(before[-1]) if before else None
        started = self.first_at is not None
        if (previous is None and not before and started) or (previous is not None and previous.finished):
            return "running"
        return "waiting"

    def seconds(self, task: TaskProgress, name: str) -> float | None:
        """How long the phase took (finished) or has taken so far (running), since the task's
        previous phase ended; None for a task's first phase (its start is not an event)."""
        index = self.phases.index(name)
        previous = task.cells.get(self.phases[index - 1]) if index else None
        if previous is None or previous.ended_at is None:
            return None
        cell = task.cells.get(name)
        if cell is not None and cell.finished and cell.ended_at is not None:
            return cell.ended_at - previous.ended_at
        if self.state(task, name) == "running":
            return max(self.clock() - previous.ended_at, 0.0)
        return None

    def outcome(self, task: TaskProgress) -> str:
        return task_outcome(task.result) if task.result is not None else "-"
