"""How the CLI shows things: one line per event, a ranking table per task, the doctor's table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from swe_fleet.cli._common import err, out
from swe_fleet.events import (
    AgentResponseCompleted,
    AgentResponseFailed,
    AnyEvent,
    CouncilJobFailed,
    CouncilJobStatus,
    DeliberationCompleted,
    RankedAgent,
)
from swe_fleet.report.words import task_outcome


def format_event(event: AnyEvent) -> str:
    """One human-readable line per event."""
    if isinstance(event, AgentResponseCompleted):
        text = " ".join(event.content.split())
        scores = (event.data or {}).get("scores")
        summary = json.dumps(scores) if scores is not None else text[:90]
        return (
            f"{event.phase:<8} {event.task_id:<14} {event.agent_id:<12} ok   "
            f"{event.output_tokens:>4} tok  {summary}"
        )
    if isinstance(event, AgentResponseFailed):
        return f"{event.phase:<8} {event.task_id:<14} {event.agent_id:<12} FAIL {event.reason}"
    if isinstance(event, CouncilJobFailed):
        return f"{'JOB':<8} {event.submission_id} FAILED: {event.reason}"
    if isinstance(event, CouncilJobStatus):
        why = f": {' '.join(event.message.split())[:120]}" if event.message else ""
        return f"{'JOB':<8} {event.submission_id} {event.state.upper()} (request {event.request_id}){why}"

    def score(r: RankedAgent) -> str:  # the score it was ranked by
        value = r.centred_score if event.ranked_by == "centred" else r.mean_score
        return "-" if value is None else (f"{value:+.2f}" if event.ranked_by == "centred" else f"{value:.2f}")

    ranking = ", ".join(f"{r.rank}. {r.agent_id} ({score(r)})" for r in event.ranking)
    votes = f"{event.votes_counted}/{event.votes_expected} by {event.ranked_by}"
    return f"{'result':<8} {event.task_id:<14} {task_outcome(event)} votes={votes}  {ranking}"


def print_event(event: AnyEvent, *, as_json: bool) -> None:
    """An event on stdout: its JSON with its ``key`` (what consumers deduplicate by, the
    ``Nats-Msg-Id`` it was published with), or its line."""
    out.print(event_json(event) if as_json else format_event(event), markup=False)


def event_json(event: AnyEvent) -> str:
    """One JSON line: the event's payload and its ``key``."""
    return json.dumps({**event.model_dump(mode="json"), "key": event.key}, ensure_ascii=False)


def print_lines(lines: list[str]) -> None:
    """Log lines (of a job) on stderr, as they are."""
    for line in lines:
        err.print(line, markup=False)


def print_rankings(results: Sequence[DeliberationCompleted]) -> None:
    """One table per task, titled with its outcome: rank, agent, mean and centred score, spread,
    votes (ranked by the centred score when the result says so)."""
    for res in results:
        table = Table(  # Text, not markup: a failed task's reason may hold brackets
            title=Text(
                f"task {res.task_id}: {task_outcome(res)} "
                f"({res.votes_counted}/{res.votes_expected} votes counted, quorum {res.quorum}, "
                f"ranked by {res.ranked_by} score)"
            )
        )
        table.add_column("rank", justify="right")
        table.add_column("agent")
        table.add_column("mean score", justify="right")
        table.add_column("centred", justify="right")
        table.add_column("spread", justify="right")
        table.add_column("votes", justify="right")
        for r in res.ranking:
            table.add_row(
                str(r.rank),
                r.agent_id,
                "-" if r.mean_score is None else f"{r.mean_score:.2f}",
                "-" if r.centred_score is None else f"{r.centred_score:+.2f}",
                "-" if r.spread is None else f"{r.spread:.2f}",
                str(r.votes),
            )
        out.print(table)


def print_checks(checks: Sequence[Any], title: str) -> None:
    """The doctor's table: one row per node and check, failures with their fix."""
    table = Table(title=title)
    for column in ("node", "check", "status", "detail", "fix"):
        table.add_column(column)
    for c in checks:
        style = "bold red" if c.failed else ("dim" if c.status == "skip" else "")
        # Text, not markup: details quote pip errors and URLs with brackets.
        table.add_row(Text(c.node), Text(c.name), Text(c.status, style=style), Text(c.detail), Text(c.fix))
    out.print(table)
