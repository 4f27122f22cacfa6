"""Words and numbers the renderings of a council share (terminal, Markdown, HTML)."""

from __future__ import annotations

from swe_fleet.events import AgentResponseCompleted, DeliberationCompleted
from swe_fleet.report.transcript import TaskTranscript


def task_outcome(result: DeliberationCompleted) -> str:
    """``decided: winner X``, ``tied: a, b`` or ``failed: why``."""
    if result.outcome == "decided":
        return f"decided: winner {result.winner}"
    if result.outcome == "tied":
        return f"tied: {', '.join(result.tied)}"
    return f"failed: {result.reason}"


def outcome_line(result: DeliberationCompleted | None) -> str:
    """The task's outcome, or that it has none (yet)."""
    if result is None:
        return "no result (the job did not finish this task)"
    votes = f"{result.votes_counted}/{result.votes_expected} votes counted, quorum {result.quorum}"
    return f"{task_outcome(result)} ({votes}, ranked by {result.ranked_by} score)"


def scores_of(task: TaskTranscript) -> dict[str, dict[str, float]]:
    """scores[voter][candidate]: the result's matrix (what counted), else the votes as written."""
    if task.result is not None and task.result.scores:
        return task.result.scores
    return {
        v.agent_id: {c: float(s) for c, s in (v.data or {}).get("scores", {}).items()}
        for v in task.votes
        if isinstance(v, AgentResponseCompleted) and (v.data or {}).get("scores")
    }


def number_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
