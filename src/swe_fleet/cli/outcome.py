"""Why a council job did not succeed, and what to do next: what ``submit``, ``run`` and
``scripts/submit_council.py`` print before they exit with the job's code.

The reason comes from the job's own ``council.job.failed`` event (the driver says why in one
line), else from Ray's job message cut to its last meaningful line (a job that died before its
driver could publish, e.g. a runtime_env that did not build).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from swe_fleet.errors import SweFleetError
from swe_fleet.events import COUNCIL_JOB_FAILED, CouncilJobFailed
from swe_fleet.nats.consumer import ConsumerOptions, iter_events
from swe_fleet.reasons import MAX_REASON_CHARS
from swe_fleet.submit.jobs_api import JobsApi

#: The next step of a failed or stopped ``submit``.
RETRY_HINT = (
    "the same command with --retry-failed (runs it again under the same id, resuming from its checkpoint)"
)
#: Bound on reading the job's council.job.failed from NATS.
REASON_TIMEOUT_S = 10.0
_MEANINGFUL = re.compile(r"error|failed|exception|refused|denied|not found|no such", re.IGNORECASE)
_OUTBOX = re.compile(r"outbox (\S+?)[ ;,)]")


def job_failed_reason(nats_url: str, submission_id: str, job_id: str) -> str | None:
    """The reason of this attempt's ``council.job.failed`` event, or None (none within the bound,
    or NATS unreachable: the Ray message is the fallback)."""

    async def find() -> str | None:
        opts = ConsumerOptions(
            nats_url=nats_url,
            durable=None,
            subjects=[COUNCIL_JOB_FAILED],
            submission_id=submission_id,
            idle_timeout_s=1.0,
            fetch_wait_s=0.5,
            connect_timeout_s=3.0,
        )
        found = None
        async for event in iter_events(opts):
            if isinstance(event, CouncilJobFailed) and event.job_id == job_id:
                found = event.reason
        return found

    try:
        return asyncio.run(asyncio.wait_for(find(), REASON_TIMEOUT_S))
    except (SweFleetError, TimeoutError, OSError):
        return None


def last_meaningful_line(message: str) -> str:
    """The last line of Ray's job message that says what went wrong, else its first line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "Ray gave no reason"
    for line in reversed(lines):
        if _MEANINGFUL.search(line):
            return line
    return lines[0]


def failure_lines(
    jobs: JobsApi,
    *,
    status: str,
    submission_id: str,
    job_id: str,
    nats_url: str,
    rerun: str,
    reason_from_events: Callable[[str, str, str], str | None] = job_failed_reason,
) -> list[str]:
    """What to tell the user about a job that ended ``status`` (not SUCCEEDED): why, and the
    next steps (``rerun`` says how to run it again)."""
    reason = reason_from_events(nats_url, submission_id, job_id)
    if reason is None:
        try:
            reason = last_meaningful_line(jobs.info(job_id).message or "")
        except SweFleetError as exc:
            reason = f"(Ray's job message could not be read: {exc})"
    lines = [f"job {job_id} {status}: {reason[:MAX_REASON_CHARS]}"]
    outbox = _OUTBOX.search(reason + " ")
    if outbox:
        lines.append(f"next: swe-fleet outbox replay {outbox.group(1)} (the events NATS did not acknowledge)")
    lines.append(f"next: {rerun}")
    return lines
