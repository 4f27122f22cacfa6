"""The one job poller: status changes and new log lines reported once, bounded by its timeout,
the same from sync code and from an event loop (where a cancellation ends it at once)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from ray.job_submission import JobStatus

from swe_fleet.errors import DashboardUnreachable, JobWaitTimeout
from swe_fleet.submit.wait import JobWatch, wait_until_terminal

from support.fake_jobs import FakeJob, FakeJobsApi

PENDING, RUNNING, SUCCEEDED = JobStatus.PENDING, JobStatus.RUNNING, JobStatus.SUCCEEDED


class FakeClock:
    """Monotonic seconds that only move when the poller sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _jobs(*statuses: JobStatus, logs: str = "") -> FakeJobsApi:
    jobs = FakeJobsApi()
    jobs.jobs["j"] = FakeJob("j", "", {}, {}, logs=logs)
    jobs.statuses["j"] = list(statuses)
    return jobs


def test_each_status_is_reported_once_and_the_terminal_one_returned() -> None:
    """PENDING, PENDING, RUNNING, SUCCEEDED: three reports, one poll_s sleep between polls."""
    jobs, clock, seen = _jobs(PENDING, PENDING, RUNNING, SUCCEEDED), FakeClock(), []
    watch = JobWatch(jobs, "j", timeout_s=60, on_status=seen.append, clock=clock)  # type: ignore[arg-type]
    assert watch.wait(poll_s=2, sleep=clock.sleep) is SUCCEEDED
    assert seen == [PENDING, RUNNING, SUCCEEDED] and clock.sleeps == [2, 2, 2]


def test_only_new_log_lines_are_reported() -> None:
    """Each poll hands over the lines added since the last one, none twice."""
    jobs, clock, got = _jobs(RUNNING, RUNNING, SUCCEEDED), FakeClock(), []

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        jobs.jobs["j"].logs += f"line {len(clock.sleeps)}\n"

    jobs.jobs["j"].logs = "line 0\n"
    watch = JobWatch(jobs, "j", timeout_s=60, on_log_lines=got.append, clock=clock)  # type: ignore[arg-type]
    watch.wait(poll_s=1, sleep=sleep)
    assert got == [["line 0"], ["line 1"], ["line 2"]]


def test_a_log_read_that_times_out_does_not_end_the_wait() -> None:
    """Logs are a courtesy: DashboardUnreachable reading them is skipped, the status decides."""
    jobs, clock = _jobs(RUNNING, SUCCEEDED), FakeClock()

    def no_logs(job_id: str) -> str:
        raise DashboardUnreachable("slow", url=jobs.url)

    jobs.logs = no_logs  # type: ignore[method-assign]
    watch = JobWatch(jobs, "j", timeout_s=60, on_log_lines=lambda lines: None, clock=clock)  # type: ignore[arg-type]
    assert watch.wait(sleep=clock.sleep) is SUCCEEDED


def test_the_wait_is_bounded_and_says_how_to_stop_the_job() -> None:
    """Still RUNNING after timeout_s: JobWaitTimeout naming the job, its state and `ray job stop`;
    the job itself is left running."""
    jobs, clock = _jobs(RUNNING), FakeClock()
    watch = JobWatch(jobs, "j", timeout_s=5, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(JobWaitTimeout) as info:
        watch.wait(poll_s=2, sleep=clock.sleep)
    assert info.value.job_id == "j" and clock.now == 6
    assert "job j is still RUNNING after 5 s" in str(info.value)
    assert f"ray job stop --address {jobs.url} j" in str(info.value) and jobs.stopped == []
    other = JobWatch(jobs, "j", timeout_s=0, after_timeout="it is stopped with the local stack")  # type: ignore[arg-type]
    with pytest.raises(JobWaitTimeout, match=r"it is stopped with the local stack$"):
        other.wait(poll_s=0.01)


def test_wait_until_terminal_polls_the_job_it_is_given() -> None:
    """The sync entry point returns the terminal status of that job id."""
    assert wait_until_terminal(_jobs(SUCCEEDED), "j", timeout_s=5, poll_s=0.01) is SUCCEEDED  # type: ignore[arg-type]


async def test_on_an_event_loop_requests_run_in_a_thread_and_callbacks_on_the_loop() -> None:
    """wait_async: the Jobs API is called off the loop's thread, on_status on it."""
    jobs = _jobs(RUNNING, SUCCEEDED)
    loop_thread, api_threads, status_threads = threading.get_ident(), [], []
    status = jobs.status

    def status_off_loop(job_id: str) -> JobStatus:
        api_threads.append(threading.get_ident())
        return status(job_id)

    jobs.status = status_off_loop  # type: ignore[method-assign]
    watch = JobWatch(
        jobs, "j", timeout_s=60, on_status=lambda s: status_threads.append(threading.get_ident())
    )  # type: ignore[arg-type]
    assert await watch.wait_async(poll_s=0.01) is SUCCEEDED
    assert loop_thread not in api_threads and set(status_threads) == {loop_thread}


async def test_a_cancelled_async_wait_ends_at_once() -> None:
    """Cancelling (Ctrl-C in `swe-fleet run`) ends the wait without waiting for the next poll."""
    watch = JobWatch(_jobs(RUNNING), "j", timeout_s=600)  # type: ignore[arg-type]
    task = asyncio.create_task(watch.wait_async(poll_s=60))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
