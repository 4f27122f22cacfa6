"""A council's transcript as one self-contained HTML file (``swe-fleet report ID --html FILE``).

No network access is needed to open it: styles are inline, there are no scripts, fonts or
images to fetch. Every event of the council is one element with its key in ``data-key`` (what
consumers deduplicate by), so a reader (or a test) can find each one. It prints: each task
starts on a new page and cards do not split.
"""

from __future__ import annotations

from html import escape

from swe_fleet.events import AgentResponseCompleted, AgentResponseFailed, CouncilJobStatus
from swe_fleet.report.transcript import JobEvent, Response, Revision, Round, TaskTranscript, Transcript
from swe_fleet.report.words import number_cell, outcome_line, scores_of

_CSS = """
:root { --ink: #1d2330; --muted: #5c6475; --line: #d9dde5; --paper: #fff; --tint: #f5f7fa;
  --ok: #1c7c3c; --bad: #b3261e; --tie: #8a5a00; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 72rem; padding: 1.5rem; color: var(--ink); background: var(--paper);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans CJK JP", sans-serif; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .5rem; border-bottom: 2px solid var(--line); padding-bottom: .25rem; }
h3 { font-size: 1rem; margin: 1.25rem 0 .5rem; }
.meta, .key, .sub { color: var(--muted); font-size: .8rem; } .key { font-family: ui-monospace, monospace; }
.prompt { background: var(--tint); border-left: 4px solid var(--line); padding: .5rem .75rem;
  white-space: pre-wrap; }
.outcome { display: inline-block; padding: .2rem .6rem; border-radius: .3rem; font-weight: 600; color: #fff; }
.outcome.decided { background: var(--ok); } .outcome.failed, .outcome.none { background: var(--bad); }
.outcome.tied { background: var(--tie); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(20rem, 1fr)); gap: .75rem; }
.card { border: 1px solid var(--line); border-radius: .4rem; padding: .5rem .75rem; break-inside: avoid; }
.card.failed { border-color: var(--bad); } .card .who { font-weight: 600; }
.card .text { white-space: pre-wrap; overflow-wrap: anywhere; margin: .35rem 0; }
.routed { margin: .25rem 0 0; padding: 0; list-style: none; }
.routed li { border-top: 1px dashed var(--line); padding: .25rem 0; white-space: pre-wrap;
  overflow-wrap: anywhere; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: .75rem; margin-bottom: .75rem; }
.pair .before { background: var(--tint); }
table { border-collapse: collapse; margin: .25rem 0 .75rem; } th, td { border: 1px solid var(--line);
  padding: .25rem .6rem; text-align: right; } th:first-child, td:first-child { text-align: left; }
.heat td.cell { min-width: 3.5rem; text-align: center; font-variant-numeric: tabular-nums; }
.fail { color: var(--bad); font-weight: 600; }
@media print { body { max-width: none; padding: 0; font-size: 11pt; } section.task { break-before: page; }
  .card, .pair, table { break-inside: avoid; } }
"""


def render_html(t: Transcript) -> str:
    """The whole transcript as an HTML document (UTF-8)."""
    tasks = "\n".join(_task(t, task) for task in t.tasks)
    no_spec = (
        ""
        if t.has_spec
        else '<p class="meta">The results store had no record of this council: task texts are not shown.</p>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Council {escape(t.council)}: {escape(t.submission_id)}</title><style>{_CSS}</style></head>"
        f'<body><header><h1>Council {escape(t.council)}</h1><div class="meta">submission '
        f'<span class="key">{escape(t.submission_id)}</span>, {len(t.tasks)} task(s), '
        f"{len(t.events)} events</div>{no_spec}</header>\n{tasks}\n{_job(t)}</body></html>\n"
    )


def _task(t: Transcript, task: TaskTranscript) -> str:
    result = task.result
    kind = result.outcome if result is not None else "none"
    parts = [
        f'<section class="task" id="task-{escape(task.task_id)}"><h2>Task {escape(task.task_id)}</h2>',
        f'<p><span class="outcome {kind}">{escape(outcome_line(result))}</span></p>',
    ]
    if result is not None:
        parts.append(f'<div class="key" data-key="{escape(result.key)}">{escape(result.key)}</div>')
    if task.prompt is not None:
        parts.append(f'<div class="prompt">{escape(task.prompt)}</div>')
    parts.append("<h3>Proposals</h3>" + _cards(t, task.proposals))
    for r in task.rounds:
        parts.append(_round(t, r))
    parts.append("<h3>Votes</h3>" + _cards(t, task.votes))
    parts.append(_heatmap(t, task))
    if result is not None and result.ranking:
        rows = "".join(
            f"<tr><td>{row.rank}</td><td>{escape(row.agent_id)}</td><td>{number_cell(row.mean_score)}</td>"
            f"<td>{number_cell(row.centred_score)}</td><td>{number_cell(row.spread)}</td><td>{row.votes}</td></tr>"
            for row in result.ranking
        )
        parts.append(
            "<h3>Ranking</h3><table><tr><th>rank</th><th>agent</th><th>mean</th><th>centred</th>"
            f"<th>spread</th><th>votes</th></tr>{rows}</table>"
        )
    if task.timings:
        rows = "".join(
            f"<tr><td>{escape(p.name)}</td><td>{p.ended_s:.1f}</td><td>{number_cell(p.seconds)}</td></tr>"
            for p in task.timings
        )
        parts.append(
            "<h3>Timings</h3><table><tr><th>phase</th><th>ended at (s)</th>"
            f"<th>since the previous phase (s)</th></tr>{rows}</table>"
        )
    return "\n".join(parts) + "</section>"


def _round(t: Transcript, r: Round) -> str:
    critiques = []
    for c in r.critiques:
        routed = r.routed.get(c.agent_id, {})
        extra = "".join(
            f"<li><b>to {escape(target)}:</b> {escape(section)}</li>" for target, section in routed.items()
        )
        critiques.append(_card(t, c, extra=f'<ul class="routed">{extra}</ul>' if extra else ""))
    revisions = "".join(_revision(t, v) for v in r.revisions)
    return (
        f'<h3>Critique round {r.number}</h3><div class="cards">{"".join(critiques)}</div>'
        f"<h3>Revisions, round {r.number}</h3>{revisions}"
    )


def _revision(t: Transcript, v: Revision) -> str:
    before = (
        f'<div class="card before"><div class="sub">what {escape(v.event.agent_id)} revised</div>'
        f'<div class="text">{escape(v.before)}</div></div>'
        if v.before is not None
        else '<div class="card before"><div class="sub">no earlier text</div></div>'
    )
    return f'<div class="pair">{before}{_card(t, v.event)}</div>'


def _cards(t: Transcript, events: list[Response]) -> str:
    return '<div class="cards">' + "".join(_card(t, e) for e in events) + "</div>"


def _card(t: Transcript, e: Response, *, extra: str = "") -> str:
    role = escape(t.roles.get(e.agent_id, e.role))
    head = f'<div><span class="who">{escape(e.agent_id)}</span> <span class="sub">{role}</span>'
    key = f'<div class="key">{escape(e.key)}</div>'
    if isinstance(e, AgentResponseFailed):
        return (
            f'<div class="card failed" data-key="{escape(e.key)}">{head}</div>'
            f'<div class="fail">failed: {escape(e.reason)}</div>{key}</div>'
        )
    assert isinstance(e, AgentResponseCompleted)
    unchanged = " (unchanged)" if (e.data or {}).get("unchanged") else ""
    return (
        f'<div class="card" data-key="{escape(e.key)}">{head}'
        f'<span class="sub">{unchanged} {e.output_tokens} tokens</span></div>'
        f'<div class="text">{escape(e.content)}</div>{extra}{key}</div>'
    )


def _heatmap(t: Transcript, task: TaskTranscript) -> str:
    scores = scores_of(task)
    if not scores:
        return ""
    low, high = t.score_range
    head = "".join(f"<th>{escape(c)}</th>" for c in task.agents)
    rows = []
    for voter, row in scores.items():
        cells = []
        for c in task.agents:
            value = row.get(c)
            style = "" if value is None else f' style="background:{_heat(value, low, high)}"'
            cells.append(f'<td class="cell"{style}>{number_cell(value)}</td>')
        rows.append(f"<tr><td>{escape(voter)}</td>{''.join(cells)}</tr>")
    return (
        '<h3>Scores</h3><p class="sub">the scores that counted (row: voter, column: candidate; '
        "expected scores under protocol.scoring: expected); red is the lowest, green the highest</p>"
        f'<table class="heat"><tr><th>voter</th>{head}</tr>{"".join(rows)}</table>'
    )


def _heat(value: float, low: int, high: int) -> str:
    """A background from red (``low``) through yellow to green (``high``), light enough for text."""
    share = 0.0 if high <= low else min(max((value - low) / (high - low), 0.0), 1.0)
    return f"hsl({round(share * 120)}, 70%, 80%)"


def _job(t: Transcript) -> str:
    if not t.job_events:
        return ""
    items = "".join(
        f'<li data-key="{escape(e.key)}"><span class="key">{escape(e.key)}</span>: '
        + (
            escape(e.state)
            if isinstance(e, CouncilJobStatus)
            else f'<span class="fail">failed: {escape(e.reason)}</span>'
        )
        + "</li>"
        for e in t.job_events
    )
    return f'<section class="job"><h2>Job</h2><ul>{items}</ul></section>'


def _job_state(e: JobEvent) -> str:
    if isinstance(e, CouncilJobStatus):
        return escape(e.state)
    return f'<span class="fail">failed: {escape(e.reason)}</span>'
