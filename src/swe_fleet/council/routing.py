"""Reading critiques: which section is addressed to whom, and whether a critic objected at all.

The section under ``### <agent_id>`` goes to that agent; a critique with no recognisable
sections goes whole to every agent it covered. A critic has no objection to a proposal when the
first line of its section is the protocol's ``no_objection_signal``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from swe_fleet.council.state import TaskState
from swe_fleet.events import AgentResponseCompleted, AgentResponseFailed

Outcome = AgentResponseCompleted | AgentResponseFailed


_HEADING = re.compile(r"^\s*#{1,6}\s*(?:proposal\s+(?:by|from)\s+)?([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:?\s*$",
                      re.IGNORECASE | re.MULTILINE)  # fmt: skip


def route_critique(text: str, targets: Sequence[str]) -> dict[str, str]:
    """Split a critique into the sections addressed to each target (module docstring)."""
    marks = [(m.start(), m.end(), m.group(1)) for m in _HEADING.finditer(text) if m.group(1) in targets]
    if not marks:
        return dict.fromkeys(targets, text.strip())
    sections: dict[str, str] = {}
    for i, (_, end, target) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else len(text)
        body = text[end:stop].strip()
        sections[target] = f"{sections[target]}\n{body}" if target in sections else body
    return sections


def no_objections(events: Sequence[Outcome], ts: TaskState, round_: int, signal: str) -> bool:
    """Every critic completed and addressed every proposal it saw with the bare signal."""
    completed = [e for e in events if isinstance(e, AgentResponseCompleted)]
    if len(completed) != len(events):
        return False
    received = ts.critiques.get(round_, {})
    for e in completed:
        for target in (e.data or {}).get("targets", []):
            notes = [text for critic, text in received.get(target, []) if critic == e.agent_id]
            if not notes or not all(_says_only(text, signal) for text in notes):
                return False
    return True


def _says_only(text: str, signal: str) -> bool:
    """The section's first line is the signal (markdown emphasis and punctuation aside)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return first.strip().strip("*_`.!:- ").lower() == signal
