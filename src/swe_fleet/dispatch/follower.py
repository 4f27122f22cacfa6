"""Following the dispatcher's jobs: every ``poll_s``, the status of each job in the ledger's
in-flight view, published once per state (``submitted``, ``running``, then one terminal state).

A reservation that a crashed dispatcher left between submitting and recording the job is
completed here when the job exists, and freed after ``reservation_timeout_s`` when it does not.

Ray's message for a failed job carries the tail of the driver's log (up to 20,000 characters),
which may hold anything the job printed: a terminal event republishes only its status line
(:func:`job_status_line`); the log stays on the cluster (``ray job logs``).
"""

from __future__ import annotations

import asyncio
import re
import time

import nats.errors
import structlog
from ray.job_submission import JobStatus

from swe_fleet.dispatch.config import DispatcherConfig
from swe_fleet.dispatch.ledger import DispatchRecord, Ledger
from swe_fleet.dispatch.status import StatusPublisher
from swe_fleet.errors import DispatchError, PublishError, SubmissionError
from swe_fleet.events import JobState
from swe_fleet.nats.pull import sleep_unless
from swe_fleet.reasons import one_line
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import attempt_job_id

log = structlog.get_logger(__name__)

#: What makes one request (or one follow-up of a job) worth trying again later.
RETRYABLE_ERRORS = (SubmissionError, PublishError, DispatchError, TimeoutError, nats.errors.Error)

_TERMINAL_STATES: dict[JobStatus, JobState] = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "stopped",
}


#: Where Ray's message for a failed entrypoint turns into the log tail it appends.
_LOG_TAIL = re.compile(r",?\s*last available logs\b.*$", re.IGNORECASE)


def job_status_line(message: str | None) -> str | None:
    """Ray's job message cut to its status line: never the driver's log tail or a traceback."""
    if not message or not message.strip():
        return None
    first = next(line.strip() for line in message.splitlines() if line.strip())
    if first.startswith("Traceback"):
        return "the job's supervisor failed; its traceback is in the job's log (ray job logs)"
    first = _LOG_TAIL.sub("", first)
    tail = " (its log: ray job logs)" if first != message.strip() else ""
    return one_line(first) + tail


def first_job_id(record: DispatchRecord) -> str:
    """The Ray job id a dispatcher gives the job of ``record``: the first attempt's (it never retries)."""
    return attempt_job_id(record.submission_id, 0)


class JobFollower:
    """Publishes the status of every job in flight (see the module docstring)."""

    def __init__(
        self, config: DispatcherConfig, jobs: JobsApi, ledger: Ledger, status: StatusPublisher
    ) -> None:
        self.config = config
        self._jobs = jobs
        self._ledger = ledger
        self._status = status

    async def run(self, stop: asyncio.Event) -> None:
        """Follow every job in flight each ``poll_s`` until ``stop`` is set; never raises for one job."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            for rid in self._ledger.in_flight_ids():
                if stop.is_set():
                    break
                if self._ledger.is_held(rid):
                    continue  # its request is being handled right now
                async with self._ledger.holding(rid):
                    record = self._ledger.in_flight_record(rid)
                    if record is not None:
                        try:
                            await self.follow(record)
                        except RETRYABLE_ERRORS as exc:
                            log.warning(
                                "dispatch.follow_failed", request_id=rid, error=f"{type(exc).__name__}: {exc}"
                            )
                        except Exception:
                            # A bug must not end the following of every job: the next tick retries.
                            log.exception("dispatch.follow_unexpected_error", request_id=rid)
            await sleep_unless(stop, max(self.config.poll_s - (loop.time() - started), 0.0))

    async def follow(self, record: DispatchRecord) -> None:
        """One look at the job of ``record``; publish each state it reached that was not published."""
        if record.job_id is None:
            # A reservation a crashed run left between submitting and recording the job.
            job_id = first_job_id(record)
            if await asyncio.to_thread(self._jobs.find_job, job_id) is None:
                if time.time() - record.reserved_at > self.config.reservation_timeout_s:
                    log.warning("dispatch.reservation_expired", request_id=record.request_id)
                    await self._ledger.release(record)
                return
            record = await self._ledger.mark_submitted(record, job_id, self._jobs.url)
        # "submitted" comes before any later state, also when publishing it failed when the
        # request was handled (the request then waits for redelivery); once published, a no-op.
        record = await self._status.publish_once(record, record.status_event("submitted"))
        assert record.job_id is not None
        job = await asyncio.to_thread(self._jobs.find_job, record.job_id)
        if job is None:
            await self._status.publish_once(
                record, record.status_event("failed", "the job no longer exists on the cluster (deleted)")
            )
            return
        if job.status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
            # A job that succeeded ran, even if it did so between two polls.
            record = await self._status.publish_once(record, record.status_event("running"))
        terminal = _TERMINAL_STATES.get(job.status)
        if terminal is not None:
            event = record.status_event(terminal, job_status_line(job.message))
            await self._status.publish_once(record, event)
