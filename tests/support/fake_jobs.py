"""An in-memory stand-in for :class:`swe_fleet.submit.jobs_api.JobsApi`, for unit tests of the logic
on top of it (submission attempts and conflicts, the job poller, the preflight flow).

Jobs live in a dict by ``job_id``; the test scripts what happens to a job when it is submitted
(``on_submit``) and how its status moves (``statuses``). The Jobs API client itself is tested
against real HTTP (tests/unit/test_submit_jobs_api.py) and a real Ray head (tests/integration).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.job_submission import JobStatus

from swe_fleet.errors import SubmissionError


@dataclass
class FakeJob:
    """What the Jobs API holds about one job (the fields our code reads)."""

    job_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    status: JobStatus = JobStatus.PENDING
    message: str = ""
    logs: str = ""
    driver_node_id: str | None = None
    error_type: str | None = None


@dataclass
class FakeJobsApi:
    """Jobs by id, alive nodes, and a record of every call that changed something."""

    url: str = "http://fake-head:8265"
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"node_id": "n1", "node_ip": "10.0.0.1", "is_head_node": True, "state": "ALIVE"}
        ]
    )
    #: Called with each new job right after it is stored (set its status and logs here).
    on_submit: Callable[[FakeJob], None] = lambda job: None
    #: Per job: the statuses successive ``status()`` calls answer (the last one repeats).
    statuses: dict[str, list[JobStatus]] = field(default_factory=dict)
    submitted: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def submit_job(
        self, *, job_id: str, entrypoint: str, runtime_env: dict[str, Any], metadata: dict[str, str]
    ) -> None:
        if job_id in self.jobs:
            raise SubmissionError(f"submitting {job_id} failed: already exists", job_id=job_id, url=self.url)
        job = FakeJob(job_id, entrypoint, dict(runtime_env), dict(metadata))
        self.jobs[job_id] = job
        self.submitted.append(job_id)
        self.on_submit(job)

    def find_job(self, job_id: str) -> FakeJob | None:
        return self.jobs.get(job_id)

    def _job(self, job_id: str) -> FakeJob:
        if job_id not in self.jobs:
            raise SubmissionError(f"no job {job_id}", job_id=job_id, url=self.url)
        return self.jobs[job_id]

    def status(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        script = self.statuses.get(job_id)
        if script:
            job.status = script.pop(0) if len(script) > 1 else script[0]
        return job.status

    def info(self, job_id: str) -> FakeJob:
        return self._job(job_id)

    def logs(self, job_id: str) -> str:
        return self._job(job_id).logs

    def stop(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        self._job(job_id).status = JobStatus.STOPPED
        return True

    def delete(self, job_id: str) -> bool:
        self.deleted.append(job_id)
        return self.jobs.pop(job_id, None) is not None

    def list_jobs(self) -> list[FakeJob]:
        return list(self.jobs.values())

    def alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.nodes if n.get("state") == "ALIVE"]
