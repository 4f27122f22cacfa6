"""One-line reasons: what an event or a one-line message says of a failure (tracebacks go to
logs only)."""

from __future__ import annotations

import re

#: Reasons in events and in one-line messages stay this short; tracebacks go to logs only.
MAX_REASON_CHARS = 300
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """A reason fit for an event: for a traceback (Ray puts whole ones in its errors), the line
    that names the exception; else the first non-empty line; cut to ``limit`` characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    head = lines[0]
    if len(lines) > 1:
        named = [line for line in lines[1:] if _EXCEPTION_LINE.match(line)]
        if named:
            head = f"{head.rstrip(':')}: {named[-1]}" if len(head) < 120 else named[-1]
    return head if len(head) <= limit else head[: limit - 3] + "..."
