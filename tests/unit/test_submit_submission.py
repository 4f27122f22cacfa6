"""submit_council: the same submission finds its job, a different one under a taken id conflicts,
retries are new attempts of the same deliberation, and the preflight runs only before a new job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ray.job_submission import JobStatus

from swe_fleet.errors import PreflightFailed, SubmissionConflict, SubmissionError
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.request import MAX_ATTEMPTS, CouncilSubmission, attempt_job_id
from swe_fleet.submit.submission import submit_council

from support.fake_jobs import FakeJob, FakeJobsApi

SPEC = CouncilSpec.from_text("tasks: [{id: t, prompt: p}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n")
SUBMISSION = CouncilSubmission(spec=SPEC, nats_url="nats://10.0.0.1:4222", submission_id="delib")


def test_a_new_submission_is_one_job_whose_entrypoint_and_metadata_name_the_deliberation(
    repo_root: Path,
) -> None:
    """The first attempt's job id is the submission id; the driver gets --submission-id; the
    metadata carries the request hash (to find it again) and the attempt."""
    jobs = FakeJobsApi()
    done = submit_council(jobs, SUBMISSION, root=repo_root)  # type: ignore[arg-type]
    assert (done.submission_id, done.job_id, done.created, done.dashboard_url) == (
        "delib", "delib", True, jobs.url,
    )  # fmt: skip
    job = jobs.jobs["delib"]
    assert job.entrypoint == "python council.py --spec spec.json --submission-id delib"
    assert job.metadata["request_hash"] == SUBMISSION.request_hash()
    assert (job.metadata["deliberation_id"], job.metadata["attempt"]) == ("delib", "0")
    # What the Ray dashboard's job list shows about it.
    assert (job.metadata["council"], job.metadata["tasks"], job.metadata["agents"]) == (
        "council",
        "t",
        "a (x), b (y)",
    )
    assert job.metadata["report"] == "swe-fleet report delib --html delib.html"


def test_the_same_submission_again_finds_the_job_and_skips_the_preflight(repo_root: Path) -> None:
    """A second submit of the same submission: no new job, created False, no preflight."""
    jobs = FakeJobsApi()
    submit_council(jobs, SUBMISSION, root=repo_root)  # type: ignore[arg-type]
    calls: list[str] = []
    again = submit_council(jobs, SUBMISSION, root=repo_root, preflight=lambda s, env: calls.append("ran"))  # type: ignore[arg-type]
    assert (again.job_id, again.created) == ("delib", False) and calls == []
    assert jobs.submitted == ["delib"]


def test_another_submission_under_a_taken_id_is_a_conflict(repo_root: Path) -> None:
    """Same explicit id, different spec: SubmissionConflict naming the id; nothing submitted."""
    jobs = FakeJobsApi()
    submit_council(jobs, SUBMISSION, root=repo_root)  # type: ignore[arg-type]
    other = CouncilSubmission(spec=SPEC, nats_url="nats://10.0.0.9:4222", submission_id="delib")
    with pytest.raises(SubmissionConflict, match="delib") as info:
        submit_council(jobs, other, root=repo_root)  # type: ignore[arg-type]
    assert info.value.submission_id == "delib" and jobs.submitted == ["delib"]


def test_retry_failed_starts_the_next_attempt_only_after_a_failure(repo_root: Path) -> None:
    """--retry-failed: a FAILED or STOPPED latest attempt gets attempt n+1 ({id}-retry{n}); a
    running or succeeded one is returned as it is."""
    jobs = FakeJobsApi()
    submit_council(jobs, SUBMISSION, root=repo_root)  # type: ignore[arg-type]
    jobs.jobs["delib"].status = JobStatus.RUNNING
    assert not submit_council(jobs, SUBMISSION, root=repo_root, retry_failed=True).created  # type: ignore[arg-type]
    jobs.jobs["delib"].status = JobStatus.FAILED
    retry = submit_council(jobs, SUBMISSION, root=repo_root, retry_failed=True)  # type: ignore[arg-type]
    assert (retry.submission_id, retry.job_id, retry.created) == ("delib", "delib-retry1", True)
    assert "--submission-id delib" in jobs.jobs["delib-retry1"].entrypoint  # same deliberation
    assert jobs.jobs["delib-retry1"].metadata["attempt"] == "1"
    latest = submit_council(jobs, SUBMISSION, root=repo_root)  # type: ignore[arg-type]
    assert (latest.job_id, latest.created) == ("delib-retry1", False)


def test_attempts_are_bounded(repo_root: Path) -> None:
    """After MAX_ATTEMPTS failed attempts the id must change: SubmissionError saying so."""
    jobs = FakeJobsApi()
    for n in range(MAX_ATTEMPTS):
        job_id = attempt_job_id("delib", n)
        jobs.jobs[job_id] = FakeJob(
            job_id, "", {}, {"request_hash": SUBMISSION.request_hash()}, JobStatus.FAILED
        )
    with pytest.raises(SubmissionError, match="new --submission-id"):
        submit_council(jobs, SUBMISSION, root=repo_root, retry_failed=True)  # type: ignore[arg-type]


def test_the_preflight_sees_the_new_jobs_runtime_env_and_can_refuse(repo_root: Path) -> None:
    """The hook gets the exact runtime_env the job would get; raising refuses: no job."""
    jobs = FakeJobsApi()
    seen: list[dict[str, Any]] = []

    def refuse(submission: CouncilSubmission, runtime_env: dict[str, Any]) -> None:
        seen.append(dict(runtime_env))
        raise PreflightFailed("no", node="n", check="c")

    with pytest.raises(PreflightFailed):
        submit_council(jobs, SUBMISSION, root=repo_root, preflight=refuse)  # type: ignore[arg-type]
    assert jobs.jobs == {} and seen and Path(seen[0]["working_dir"]).name.startswith("swe-fleet-job-")
    submit_council(jobs, SUBMISSION, root=repo_root, preflight=lambda s, env: seen.append(dict(env)))  # type: ignore[arg-type]
    assert seen[-1] == {**jobs.jobs["delib"].runtime_env, "working_dir": seen[-1]["working_dir"]}


def test_a_lost_race_for_the_id_finds_the_winners_job(repo_root: Path) -> None:
    """Another submitter created the same job between our look-up and our submit: Ray refuses
    ours, and that job (same request) is returned as found."""
    jobs = FakeJobsApi()

    def winner_first(submission: CouncilSubmission, runtime_env: dict[str, Any]) -> None:
        jobs.jobs["delib"] = FakeJob("delib", "", {}, {"request_hash": SUBMISSION.request_hash()})

    done = submit_council(jobs, SUBMISSION, root=repo_root, preflight=winner_first)  # type: ignore[arg-type]
    assert (done.job_id, done.created) == ("delib", False) and jobs.submitted == []
