"""What submit and run say about a job that did not succeed: why (one line), and what next."""

from __future__ import annotations

from ray.job_submission import JobStatus

from swe_fleet.cli.outcome import RETRY_HINT, failure_lines, last_meaningful_line
from swe_fleet.reasons import MAX_REASON_CHARS, one_line

from support.fake_jobs import FakeJob, FakeJobsApi

RAY_MESSAGE = """Job entrypoint command failed with exit code 1, last available logs (truncated):
2026-12-03 INFO worker.py: connecting
Traceback (most recent call last):
  File "jobs/council.py", line 3, in <module>
ModuleNotFoundError: No module named 'nats'
"""


def _jobs(message: str) -> FakeJobsApi:
    jobs = FakeJobsApi()
    jobs.jobs["j"] = FakeJob("j", "", {}, {}, status=JobStatus.FAILED, message=message)
    return jobs


def test_the_jobs_own_council_job_failed_reason_comes_first() -> None:
    """The driver's council.job.failed reason, and the retry hint."""
    reason = "vLLM engine failed to start (model 'm'): boom"
    lines = failure_lines(
        _jobs(RAY_MESSAGE), status="FAILED", submission_id="s", job_id="j", nats_url="nats://x:1",
        rerun=RETRY_HINT, reason_from_events=lambda url, sid, jid: reason,
    )  # type: ignore[arg-type]  # fmt: skip
    assert lines == [
        "job j FAILED: vLLM engine failed to start (model 'm'): boom",
        f"next: {RETRY_HINT}",
    ]


def test_without_an_event_rays_message_gives_its_last_meaningful_line() -> None:
    """A job that died before its driver could publish: the line that says what went wrong."""
    lines = failure_lines(
        _jobs(RAY_MESSAGE), status="FAILED", submission_id="s", job_id="j", nats_url="nats://x:1",
        rerun=RETRY_HINT, reason_from_events=lambda url, sid, jid: None,
    )  # type: ignore[arg-type]  # fmt: skip
    assert lines[0] == "job j FAILED: ModuleNotFoundError: No module named 'nats'"
    assert last_meaningful_line("Job was stopped\n") == "Job was stopped"
    assert last_meaningful_line("") == "Ray gave no reason"


def test_an_outbox_reason_names_the_replay_command() -> None:
    """Events in an outbox: the exact `outbox replay` command comes first among the next steps."""
    reason = "3 events were not acknowledged by NATS; they are in the outbox /tmp/o.jsonl (swe-fleet ...)"
    lines = failure_lines(
        _jobs(""), status="FAILED", submission_id="s", job_id="j", nats_url="nats://x:1",
        rerun=RETRY_HINT, reason_from_events=lambda url, sid, jid: reason,
    )  # type: ignore[arg-type]  # fmt: skip
    assert lines[1].startswith("next: swe-fleet outbox replay /tmp/o.jsonl ")
    assert lines[2] == f"next: {RETRY_HINT}"


def test_one_line_keeps_the_exception_of_a_traceback_and_cuts_long_text() -> None:
    """Ray's errors carry whole tracebacks: an event gets the headline and the exception line."""
    text = "The actor died in its creation task\n  File 'x.py', line 1\nValueError: bad model\n"
    assert one_line(text) == "The actor died in its creation task: ValueError: bad model"
    assert one_line("just this") == "just this"
    assert len(one_line("x" * 5000)) == MAX_REASON_CHARS
