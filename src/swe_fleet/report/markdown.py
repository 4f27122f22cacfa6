"""A council's transcript as Markdown (``swe-fleet report ID --md FILE``)."""

from __future__ import annotations

from swe_fleet.events import AgentResponseCompleted, AgentResponseFailed, AnyEvent, CouncilJobStatus
from swe_fleet.report.transcript import Response, TaskTranscript, Transcript
from swe_fleet.report.words import number_cell, outcome_line, scores_of


def render_markdown(t: Transcript) -> str:
    """The whole transcript: per task its text, proposals, rounds, votes, scores, outcome, timings."""
    lines = [f"# Council {t.council}: {t.submission_id}", ""]
    if not t.has_spec:
        lines += ["_The results store had no record of this council: task texts are not shown._", ""]
    for task in t.tasks:
        lines += _task(t, task)
    if t.job_events:
        lines += ["## Job", ""]
        for e in t.job_events:
            what = f"{e.state}" if isinstance(e, CouncilJobStatus) else f"failed: {e.reason}"
            lines.append(f"- `{e.key}`: {what}")
        lines.append("")
    return "\n".join(lines)


def _task(t: Transcript, task: TaskTranscript) -> list[str]:
    lines = [f"## Task {task.task_id}", "", f"**Outcome:** {outcome_line(task.result)}", ""]
    if task.prompt is not None:
        lines += [_quote(task.prompt), ""]
    lines += ["### Proposals", ""]
    for e in task.proposals:
        lines += _response(t, e)
    for r in task.rounds:
        lines += [f"### Critique round {r.number}", ""]
        for c in r.critiques:
            lines += _response(t, c)
            for target, section in r.routed.get(c.agent_id, {}).items():
                lines += [f"- to **{target}**:", "", _quote(section, indent="  "), ""]
        lines += [f"### Revisions, round {r.number}", ""]
        for v in r.revisions:
            if v.before is not None:
                lines += [f"_{v.event.agent_id} revised:_", "", _quote(v.before), ""]
            lines += _response(t, v.event)
    lines += ["### Votes", ""]
    for e in task.votes:
        lines += _response(t, e)
    scores = scores_of(task)
    if scores:
        candidates = task.agents
        lines += ["### Scores (row: voter, column: candidate)", ""]
        lines += ["| voter | " + " | ".join(candidates) + " |", "|---" * (len(candidates) + 1) + "|"]
        for voter, row in scores.items():
            lines.append(f"| {voter} | " + " | ".join(number_cell(row.get(c)) for c in candidates) + " |")
        lines.append("")
    if task.result is not None and task.result.ranking:
        lines += ["### Ranking", "", "| rank | agent | mean | votes |", "|---|---|---|---|"]
        for ranked in task.result.ranking:
            lines.append(
                f"| {ranked.rank} | {ranked.agent_id} | {number_cell(ranked.mean_score)} | {ranked.votes} |"
            )
        lines.append("")
    if task.timings:
        lines += [
            "### Timings",
            "",
            "| phase | ended at (s) | since the previous phase (s) |",
            "|---|---|---|",
        ]
        lines += [f"| {p.name} | {p.ended_s:.1f} | {number_cell(p.seconds)} |" for p in task.timings]
        lines.append("")
    return lines


def _response(t: Transcript, e: Response | AnyEvent) -> list[str]:
    if isinstance(e, AgentResponseFailed):
        head = f"**{e.agent_id}** ({t.roles.get(e.agent_id, e.role)}) FAILED: {e.reason}"
        return [head, f"<sub>`{e.key}`</sub>", ""]
    assert isinstance(e, AgentResponseCompleted)
    stands = " (unchanged)" if (e.data or {}).get("unchanged") else ""
    head = f"**{e.agent_id}** ({t.roles.get(e.agent_id, e.role)}){stands}, {e.output_tokens} tokens"
    return [head, "", _quote(e.content), f"<sub>`{e.key}`</sub>", ""]


def _quote(text: str, indent: str = "") -> str:
    return "\n".join(
        f"{indent}> {line}" if line.strip() else f"{indent}>" for line in text.splitlines() or [""]
    )
