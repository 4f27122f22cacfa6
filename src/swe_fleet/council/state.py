"""Where a council's deliberation stands between phases: pure data the driver checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swe_fleet.spec import CouncilSpec


@dataclass
class TaskState:
    """Where one task's deliberation stands."""

    #: agent_id -> current proposal text (agents whose proposal failed are absent).
    proposals: dict[str, str] = field(default_factory=dict)
    #: round -> target agent_id -> [(critic, text)] addressed to that target.
    critiques: dict[int, dict[str, list[tuple[str, str]]]] = field(default_factory=dict)
    #: voter -> candidate -> score (expected or written), for votes that counted.
    votes: dict[str, dict[str, float]] = field(default_factory=dict)
    votes_expected: int = 0
    rounds_run: int = 0
    settled: bool = False
    transcript: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (round numbers become string keys)."""
        return {
            **{k: v for k, v in self.__dict__.items() if k != "critiques"},
            "critiques": {
                str(r): {t: [list(n) for n in notes] for t, notes in by_target.items()}
                for r, by_target in self.critiques.items()
            },
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TaskState:
        """Inverse of :meth:`to_dict`."""
        critiques = {
            int(r): {t: [(n[0], n[1]) for n in notes] for t, notes in by_target.items()}
            for r, by_target in raw["critiques"].items()
        }
        return cls(**{**raw, "critiques": critiques})


@dataclass
class CouncilState:
    """The whole council's state between phases (pure data; the driver checkpoints it)."""

    tasks: dict[str, TaskState]

    @classmethod
    def start(cls, spec: CouncilSpec) -> CouncilState:
        return cls(tasks={t.id: TaskState() for t in spec.tasks})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: task id -> :meth:`TaskState.to_dict`."""
        return {tid: ts.to_dict() for tid, ts in self.tasks.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CouncilState:
        """Inverse of :meth:`to_dict`."""
        return cls(tasks={tid: TaskState.from_dict(raw) for tid, raw in data.items()})
