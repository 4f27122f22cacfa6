"""Submitting a council: find the job a submission already started, attempts, conflicts, preflight.

- The ``submission_id`` is derived from the submission (:mod:`swe_fleet.submit.request`): the
  same submission twice finds the existing job instead of Ray's HTTP 500; a different submission
  under an explicit id that is taken raises :class:`~swe_fleet.errors.SubmissionConflict`
  (each job carries its submission's ``request_hash`` in its metadata).
- A retry is a new Ray job of the same deliberation (attempt ``n`` is
  :func:`~swe_fleet.submit.request.attempt_job_id`): its driver publishes under the same
  ``submission_id`` and resumes from that id's checkpoint.
- ``entrypoint_num_cpus=0`` (:meth:`~swe_fleet.submit.jobs_api.JobsApi.submit_job`): a driver
  holding a CPU starves its own engine on small clusters.
- A preflight hook (:func:`swe_fleet.preflight.orchestration.preflight_hook`) runs only when a
  new job is about to be submitted, in the exact runtime_env that job gets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.job_submission import JobDetails, JobStatus

import swe_fleet
from swe_fleet.errors import DashboardUnreachable, SubmissionConflict, SubmissionError
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import MAX_ATTEMPTS, CouncilSubmission, SubmittedJob, attempt_job_id
from swe_fleet.submit.runtime_env import ENTRYPOINT_FILE, STAGED_SPEC_FILE, staged_runtime_env

#: Called with the submission and its runtime_env right before a new job is submitted; raises to refuse.
PreflightHook = Callable[[CouncilSubmission, dict[str, Any]], None]


def submit_council(
    jobs: JobsApi,
    submission: CouncilSubmission,
    *,
    root: Path | None = None,
    retry_failed: bool = False,
    preflight: PreflightHook | None = None,
) -> SubmittedJob:
    """Submit the council job, or find the one this submission already started.

    With ``retry_failed``, the latest attempt of this submission is retried when it ended
    FAILED or STOPPED; otherwise the latest attempt is returned as it is.

    Args:
        jobs: the cluster's Jobs API.
        submission: what to run (its ``submission_id`` derived unless explicit).
        root: the checkout (default: the one swe_fleet is installed from).
        retry_failed: start a new attempt when the latest one failed or was stopped.
        preflight: runs with the exact runtime_env before a *new* job is submitted; raises
            (e.g. ``PreflightFailed``) to refuse.

    Raises:
        SubmissionConflict: the id is taken by a job with a different submission.
        SubmissionError / DashboardUnreachable: the Jobs API failed, or every attempt is used.
    """
    sid = submission.derived_submission_id()
    request_hash = submission.request_hash()
    attempt, latest = find_latest_attempt(jobs, sid)
    if latest is not None:
        _check_same_submission(jobs, latest, sid, request_hash)
        if not (retry_failed and latest.status in (JobStatus.FAILED, JobStatus.STOPPED)):
            return SubmittedJob(sid, attempt_job_id(sid, attempt), created=False, dashboard_url=jobs.url)
        attempt += 1
        if attempt >= MAX_ATTEMPTS:
            raise SubmissionError(
                f"{sid} was already tried {MAX_ATTEMPTS} times; submit it under a new --submission-id",
                submission_id=sid,
                url=jobs.url,
            )
    job_id = attempt_job_id(sid, attempt)
    with staged_runtime_env(submission, root) as runtime_env:
        if preflight is not None:
            preflight(submission, runtime_env)
        try:
            jobs.submit_job(
                job_id=job_id,
                entrypoint=f"python {ENTRYPOINT_FILE} --spec {STAGED_SPEC_FILE} --submission-id {sid}",
                runtime_env=runtime_env,
                metadata=job_metadata(submission, sid, attempt),
            )
        except DashboardUnreachable:
            raise
        except SubmissionError:
            # A concurrent submitter may have won the race for this id: that job is ours too.
            again = jobs.find_job(job_id)
            if again is None:
                raise
            _check_same_submission(jobs, again, sid, request_hash)
            return SubmittedJob(sid, job_id, created=False, dashboard_url=jobs.url)
    return SubmittedJob(sid, job_id, created=True, dashboard_url=jobs.url)


def job_metadata(submission: CouncilSubmission, submission_id: str, attempt: int) -> dict[str, str]:
    """What a council job carries in its Jobs API metadata: what finds it again (hashes, ids)
    and what the Ray dashboard shows about it (council, tasks, agents, how to read its report)."""
    spec = submission.spec
    return {
        "swe_fleet_version": swe_fleet.__version__,
        "council": spec.name,
        "tasks": _listed([t.id for t in spec.tasks]),
        "agents": _listed([f"{a.id} ({a.role})" for a in spec.agents]),
        "report": f"swe-fleet report {submission_id} --html {submission_id}.html",
        "deliberation_id": submission_id,
        "attempt": str(attempt),
        "spec_hash": submission.effective_spec().spec_hash(),
        "request_hash": submission.request_hash(),
        "runtime_env": submission.env_kind,
    }


def _listed(items: list[str], limit: int = 400) -> str:
    """Comma-separated, cut to ``limit`` characters (metadata is for a glance, not the spec)."""
    text = ", ".join(items)
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(items)} in all)"


def find_latest_attempt(jobs: JobsApi, submission_id: str) -> tuple[int, JobDetails | None]:
    """(attempt number, Ray job) of the newest attempt of deliberation ``submission_id``;
    ``(0, None)`` when it has none."""
    latest: JobDetails | None = None
    attempt = 0
    for n in range(MAX_ATTEMPTS):
        found = jobs.find_job(attempt_job_id(submission_id, n))
        if found is None:
            break
        attempt, latest = n, found
    return attempt, latest


def _check_same_submission(jobs: JobsApi, job: JobDetails, submission_id: str, request_hash: str) -> None:
    theirs = (job.metadata or {}).get("request_hash")
    if theirs != request_hash:
        raise SubmissionConflict(
            f"a job with submission_id {submission_id!r} exists with a different request "
            f"(request_hash {theirs!r}, ours {request_hash!r}); choose another --submission-id, "
            "or delete the old job",
            submission_id=submission_id,
            url=jobs.url,
        )
