"""The one job poller: follow a Ray job to a terminal state, bounded, from sync or async code.

A :class:`JobWatch` polls one job (status, and new log lines when asked), reports changes, and
raises :class:`~swe_fleet.errors.JobWaitTimeout` once the bound is spent. Each poll is one or two
Jobs API requests, each bounded by the client's request timeout.

- sync callers (``swe-fleet submit``, the preflight job): :func:`wait_until_terminal`;
- async callers (``swe-fleet run``, which consumes events meanwhile): ``await
  JobWatch(...).wait_async()``: the requests run in a thread, the callbacks on the event loop,
  and a cancellation (Ctrl-C) takes effect at once; the thread ends with its bounded request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ray.job_submission import JobStatus

from swe_fleet.errors import DashboardUnreachable, JobWaitTimeout
from swe_fleet.submit.jobs_api import JobsApi

#: Seconds between two polls of a job.
DEFAULT_POLL_S = 1.0


class JobWatch:
    """One Ray job followed until it is terminal (see the module docstring).

    Args:
        jobs: the cluster's Jobs API.
        job_id: Ray's id of the job (one attempt).
        timeout_s: the bound on the whole wait, from now.
        on_status: called with each new status (the first one included).
        on_log_lines: called with the log lines that are new since the last poll; logs are a
            courtesy: a log read that times out is skipped, not an error.
        after_timeout: what the timeout's message says happens to the job (default: it keeps
            running, and how to stop it).
        clock: monotonic seconds (tests inject one).
    """

    def __init__(
        self,
        jobs: JobsApi,
        job_id: str,
        *,
        timeout_s: float,
        on_status: Callable[[JobStatus], None] | None = None,
        on_log_lines: Callable[[list[str]], None] | None = None,
        after_timeout: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.timeout_s = timeout_s
        self._on_status = on_status
        self._on_log_lines = on_log_lines
        self._after_timeout = after_timeout
        self._clock = clock
        self._deadline = clock() + timeout_s
        self._last: JobStatus | None = None
        self._seen_lines = 0

    def poll(self) -> JobStatus | None:
        """One poll: the terminal status, or None while the job runs.

        Raises:
            JobWaitTimeout: not terminal and the bound is spent (the job is left as it is).
            SubmissionError / DashboardUnreachable: the status could not be read.
        """
        return self._observe(*self._fetch())

    def wait(self, poll_s: float = DEFAULT_POLL_S, sleep: Callable[[float], None] = time.sleep) -> JobStatus:
        """Poll every ``poll_s`` until terminal; return the terminal status (raises as :meth:`poll`)."""
        while (status := self.poll()) is None:
            sleep(poll_s)
        return status

    async def wait_async(self, poll_s: float = DEFAULT_POLL_S) -> JobStatus:
        """:meth:`wait` for an event loop: requests in a thread, callbacks on the loop."""
        while True:
            status = self._observe(*await asyncio.to_thread(self._fetch))
            if status is not None:
                return status
            await asyncio.sleep(poll_s)

    def _fetch(self) -> tuple[JobStatus, list[str] | None]:
        """The Jobs API part of a poll: the status, and the log's lines when they are wanted."""
        status = self.jobs.status(self.job_id)
        if self._on_log_lines is None:
            return status, None
        try:
            return status, self.jobs.logs(self.job_id).splitlines()
        except DashboardUnreachable:
            return status, []  # logs are a courtesy: a slow log read must not end the wait

    def _observe(self, status: JobStatus, lines: list[str] | None) -> JobStatus | None:
        """Report what changed; the status when terminal; raise when the bound is spent."""
        if status != self._last and self._on_status is not None:
            self._on_status(status)
        self._last = status
        if lines is not None and self._on_log_lines is not None and len(lines) > self._seen_lines:
            self._on_log_lines(lines[self._seen_lines :])
            self._seen_lines = len(lines)
        if status.is_terminal():
            return status
        if self._clock() > self._deadline:
            after = self._after_timeout or (
                f"it keeps running (stop it with `ray job stop --address {self.jobs.url} {self.job_id}`)"
            )
            raise JobWaitTimeout(
                f"job {self.job_id} is still {status.value} after {self.timeout_s:.0f} s; {after}",
                job_id=self.job_id,
                url=self.jobs.url,
            )
        return None


def wait_until_terminal(
    jobs: JobsApi,
    job_id: str,
    *,
    timeout_s: float,
    poll_s: float = DEFAULT_POLL_S,
    on_status: Callable[[JobStatus], None] | None = None,
    on_log_lines: Callable[[list[str]], None] | None = None,
) -> JobStatus:
    """Poll job ``job_id`` until it is terminal (bounded by ``timeout_s``); return its status.

    Raises:
        JobWaitTimeout: not terminal within ``timeout_s`` (the job keeps running).
        SubmissionError / DashboardUnreachable: the status could not be read.
    """
    watch = JobWatch(jobs, job_id, timeout_s=timeout_s, on_status=on_status, on_log_lines=on_log_lines)
    return watch.wait(poll_s)
