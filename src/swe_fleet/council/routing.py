"""Reading critiques: which section is addressed to whom, and whether a critic objected at all.

The section under a heading that names an agent goes to that agent: ``### <agent_id>`` as asked,
and the usual variations, case-insensitively (``### QA``, ``### Agent qa``, ``**qa**``, ``## Critique
of qa's proposal``). An agent the critique covered but whose section cannot be found gets the
whole critique text. A critic has no objection to a proposal when the
first line of its section is the protocol's ``no_objection_signal``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from swe_fleet.council.state import TaskState
from swe_fleet.events import AgentResponseCompleted, AgentResponseFailed

Outcome = AgentResponseCompleted | AgentResponseFailed


#: A heading line: markdown (``### QA``, ``## Critique of qa:``) or a bold-only line (``**qa**``).
_HEADING = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*(?P<md>.+?)|\*\*(?P<bold>[^*\n]+?)\*\*[ \t]*:?)[ \t]*$", re.MULTILINE
)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _heading_target(title: str, targets: Mapping[str, str]) -> str | None:
    """The one target a heading's title names (``Agent qa``, ``QA's proposal``, ``Proposal by
    dev``), case-insensitively; None when it names none or several."""
    words = (m.group(0).rstrip(".-_").lower() for m in _WORD.finditer(title))
    named = {targets[w] for w in words if w in targets}
    return named.pop() if len(named) == 1 else None


def route_critique(text: str, targets: Sequence[str]) -> dict[str, str]:
    """Split a critique into the sections addressed to each target (module docstring).

    A target none of whose sections could be found gets the whole text: no critique is lost
    because a heading was spelled differently."""
    by_lower = {t.lower(): t for t in targets}
    marks = []
    for m in _HEADING.finditer(text):
        target = _heading_target(m.group("md") or m.group("bold"), by_lower)
        if target is not None:
            marks.append((m.start(), m.end(), target))
    sections: dict[str, str] = {}
    for i, (_, end, target) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else len(text)
        body = text[end:stop].strip()
        sections[target] = f"{sections[target]}\n{body}" if target in sections else body
    whole = text.strip()
    return {t: sections.get(t, whole) for t in targets}


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
