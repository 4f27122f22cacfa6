"""The transcript and its renderings, from the events of a whole council on the scripted LLM:
critiques routed to their targets, revisions beside what they revised, every event in the
HTML by its key, text escaped, and the parts of the report that only the spec knows."""

from __future__ import annotations

import html.parser
from typing import Any

from swe_fleet.events import (
    AgentResponseCompleted,
    AgentResponseFailed,
    CouncilJobFailed,
    DeliberationCompleted,
)
from swe_fleet.llm.base import ChatRequest
from swe_fleet.nats.results import CouncilRecord
from swe_fleet.report.html import render_html
from swe_fleet.report.markdown import render_markdown
from swe_fleet.report.progress import CouncilProgress
from swe_fleet.report.transcript import build_transcript
from swe_fleet.spec import CouncilSpec

from support.scripted_council import _task_of, default_answer, run_scripted

SPEC = """
name: report-test
tasks:
  - {id: t1, prompt: "Design a rate limiter.\\nKeep it <simple> & fair."}
  - {id: t2, prompt: "東京の天気を要約して。¿Qué tal mañana?"}
agents: [{id: a, role: architect}, {id: b, role: developer}, {id: c, role: qa}]
protocol: {critique_rounds: 1, early_stop: false}
"""


class _Keys(html.parser.HTMLParser):
    """Every ``data-key`` of a document, parsed as a browser would read the attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.keys += [v for k, v in attrs if k == "data-key" and v is not None]


def _answer(phase: str, req: ChatRequest) -> str:
    if phase == "propose" and _task_of(req) == "t1":
        return "<script>alert('x')</script> use a token bucket"
    return default_answer(phase, req)


async def _council():  # type: ignore[no-untyped-def]
    spec, _, pub, report = await run_scripted(SPEC, _answer, submission_id="sub-1")
    return spec, pub.events, report


async def test_every_event_is_in_the_html_once_by_its_key_and_text_is_escaped() -> None:
    spec, events, _ = await _council()
    failed = CouncilJobFailed(
        submission_id="sub-1", council="report-test", task_id="*", reason="a <b> reason"
    )
    doc = render_html(build_transcript("sub-1", [*events, failed], spec.model_dump(mode="json")))
    parser = _Keys()
    parser.feed(doc)
    assert sorted(parser.keys) == sorted(e.key for e in [*events, failed])
    assert "<script>" not in doc and "&lt;script&gt;alert" in doc
    assert "Keep it &lt;simple&gt; &amp; fair." in doc
    assert "東京の天気を要約して。¿Qué tal mañana?" in doc
    assert "http" not in doc.replace('"http-equiv"', "")  # nothing to fetch: styles inline, no links


async def test_critiques_are_routed_to_their_targets_and_revisions_sit_beside_what_they_revised() -> None:
    spec, events, _ = await _council()
    t = build_transcript("sub-1", events, spec.model_dump(mode="json"))
    t1 = t.tasks[0]
    assert [p.agent_id for p in t1.proposals] == ["a", "b", "c"]
    (round_1,) = t1.rounds
    # The scripted critic writes "### <target>\n<target> in t1 misses edge cases." per target.
    assert round_1.routed["a"] == {"b": "b in t1 misses edge cases.", "c": "c in t1 misses edge cases."}
    proposal_of = {p.agent_id: p.content for p in t1.proposals if isinstance(p, AgentResponseCompleted)}
    assert {v.event.agent_id: v.before for v in round_1.revisions} == proposal_of
    assert t1.result is not None and t1.result.outcome == "decided"
    assert [p.name for p in t1.timings] == ["propose", "critique.1", "revise.1", "vote", "result"]


async def test_markdown_has_the_task_text_each_phase_the_scores_and_the_outcome() -> None:
    spec, events, report = await _council()
    md = render_markdown(build_transcript("sub-1", events, spec.model_dump(mode="json")))
    t2 = next(r for r in report.results if r.task_id == "t2")
    assert "> 東京の天気を要約して。¿Qué tal mañana?" in md
    for heading in (
        "### Proposals",
        "### Critique round 1",
        "### Revisions, round 1",
        "### Votes",
        "### Scores",
    ):
        assert md.count(heading) == 2
    assert f"decided: winner {t2.winner}" in md
    assert "- to **b**:" in md


async def test_without_the_spec_the_report_still_has_every_event_and_says_what_is_missing() -> None:
    _, events, _ = await _council()
    t = build_transcript("sub-1", events, None)
    assert not t.has_spec and [task.prompt for task in t.tasks] == [None, None]
    assert sorted(e.key for e in t.events) == sorted(e.key for e in events)
    assert "task texts are not shown" in render_html(t)


async def test_a_failed_slot_and_an_event_stored_twice() -> None:
    spec, events, _ = await _council()
    failed = AgentResponseFailed(
        submission_id="sub-1", council="report-test", task_id="t1", phase="vote", agent_id="c",
        role="qa", reason="vote unparseable: no JSON",
    )  # fmt: skip
    others = [e for e in events if e.key != "sub-1/t1/vote/0/c"]
    assert len(others) == len(events) - 1
    t = build_transcript("sub-1", [*others, failed, failed, *others[:3]], spec.model_dump(mode="json"))
    assert sorted(e.key for e in t.events) == sorted(e.key for e in [*others, failed])
    assert "failed: vote unparseable: no JSON" in render_html(t)


async def test_a_stored_record_reads_back_as_it_was_written() -> None:
    spec, _, report = await _council()
    record = CouncilRecord(
        submission_id="sub-1", council=spec.name, spec=spec.model_dump(mode="json"), results=report.results
    )
    again = CouncilRecord.model_validate_json(record.model_dump_json())
    assert again == record
    assert all(isinstance(r, DeliberationCompleted) for r in again.results)
    assert again.task_ids == ["t1", "t2"]


def _folded(spec: CouncilSpec, events: list[Any], n: int, now: float | None = None) -> CouncilProgress:
    progress = CouncilProgress(spec.model_dump(mode="json"), clock=lambda: now or events[n - 1].created_at)
    for e in events[:n]:
        progress.apply(e)
    return progress


async def test_the_grid_moves_from_waiting_to_running_to_done_phase_by_phase() -> None:
    spec, events, _ = await _council()
    t1_propose = [i for i, e in enumerate(events, 1) if e.key.startswith("sub-1/t1/propose/")]
    mid = _folded(spec, events, t1_propose[0])  # one proposal of t1 in
    t1 = mid.tasks["t1"]
    assert [mid.state(t1, p) for p in mid.phases] == ["running", "waiting", "waiting", "waiting"]
    assert (t1.cells["propose"].completed, t1.cells["propose"].planned) == (1, 3)
    after = _folded(spec, events, t1_propose[-1])  # every proposal of t1 in
    t1 = after.tasks["t1"]
    assert [after.state(t1, p) for p in after.phases] == ["done", "running", "waiting", "waiting"]
    assert not after.done
    end = _folded(spec, events, len(events))
    assert end.done and all(end.state(t, p) == "done" for t in end.tasks.values() for p in end.phases)
    assert end.outcome(end.tasks["t1"]).startswith("decided: winner ")


async def test_an_early_stopped_task_shows_its_unneeded_round_as_skipped() -> None:
    text = SPEC.replace("{critique_rounds: 1, early_stop: false}", "{critique_rounds: 2, early_stop: true}")
    spec, _, pub, _ = await run_scripted(
        text,
        lambda phase, req: "NO OBJECTION" if phase == "critique" else _answer(phase, req),
        submission_id="sub-2",
    )
    progress = _folded(spec, pub.events, len(pub.events))
    t1 = progress.tasks["t1"]
    assert t1.result is not None and t1.result.early_stopped
    states = {p: progress.state(t1, p) for p in progress.phases}
    assert (states["critique.1"], states["critique.2"], states["revise.2"], states["vote"]) == (
        "done", "skipped", "skipped", "done",
    )  # fmt: skip


async def test_a_failed_job_ends_the_grid_saying_why() -> None:
    spec, events, _ = await _council()
    progress = _folded(spec, events, 3)
    assert not progress.done
    progress.apply(CouncilJobFailed(submission_id="sub-1", council="c", task_id="*", reason="engine died"))
    assert progress.done and progress.job_ended == "job failed: engine died"


def test_the_view_names_each_state_tokens_and_the_outcome() -> None:
    from rich.console import Console

    from swe_fleet.cli.watch import CouncilView

    spec = CouncilSpec.from_text(
        "tasks: [{id: t, prompt: p}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n"
    )
    progress = CouncilProgress(spec.model_dump(mode="json"))
    progress.apply(
        AgentResponseCompleted(
            submission_id="s", council="c", task_id="t", phase="propose", agent_id="a", role="x",
            content="c", output_tokens=7,
        )
    )  # fmt: skip
    console = Console(record=True, width=200)
    console.print(CouncilView(progress, "council s"))
    text = console.export_text()
    assert "running 1/2" in text and "7 tok" in text and "waiting 0/2" in text


async def test_a_plan_learnt_late_keeps_what_the_events_counted() -> None:
    """The watch began before the job stored its spec: the grid drawn from the events so far gets
    every planned cell, the counts stay."""
    spec, events, _ = await _council()
    progress = CouncilProgress(None)
    t1_propose = [e for e in events if e.key.startswith("sub-1/t1/propose/")]
    for e in t1_propose[:2]:
        progress.apply(e)
    assert progress.phases == ["propose"] and progress.tasks["t1"].cells["propose"].planned == 2
    progress.plan(spec.model_dump(mode="json"))
    t1 = progress.tasks["t1"]
    assert progress.phases == ["propose", "critique.1", "revise.1", "vote"] and list(progress.tasks) == [
        "t1",
        "t2",
    ]
    assert (t1.cells["propose"].completed, t1.cells["propose"].planned) == (2, 3)
    assert [progress.state(t1, p) for p in progress.phases] == ["running", "waiting", "waiting", "waiting"]
