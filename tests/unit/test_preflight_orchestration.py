"""The one preflight flow: the cluster half shared by submit and doctor, the cache between them,
and the refusal that names every failing node and check with its fix."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ray.job_submission import JobStatus

from swe_fleet.errors import PreflightFailed
from swe_fleet.preflight.cache import PreflightCache
from swe_fleet.preflight.job import PREFLIGHT_JOB_PREFIX, node_expectations
from swe_fleet.preflight.node_check import FAIL, OK, REPORT_MARKER, Check
from swe_fleet.preflight.orchestration import check_nodes, ensure_preflight, preflight_failed
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.runtime_env import staged_runtime_env

from support.fake_jobs import FakeJob, FakeJobsApi

SPEC = CouncilSpec.from_text("tasks: [{id: t, prompt: p}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n")
SUBMISSION = CouncilSubmission(spec=SPEC, nats_url="nats://10.0.0.1:4222")


def _reporting(*checks: Check) -> Callable[[FakeJob], None]:
    """A preflight job that succeeds (or fails) at once and prints the report of ``checks``."""

    def run(job: FakeJob) -> None:
        job.status = JobStatus.FAILED if any(c.failed for c in checks) else JobStatus.SUCCEEDED
        doc = {"nodes": [], "checks": [c.to_dict() for c in checks]}
        job.logs = f"row\n{REPORT_MARKER}{json.dumps(doc)}\n"

    return run


PASS = Check("nats", OK, "up", node="10.0.0.1 (head n1)", node_id="n1")
DOWN = Check(
    "nats", FAIL, "nats://10.0.0.1:4222 refused", "check --nats-url", node="10.0.0.1 (head n1)", node_id="n1"
)


def _ensure(jobs: FakeJobsApi, repo_root: Path, cache: PreflightCache, info: list[str]) -> list[Check]:
    with staged_runtime_env(SUBMISSION, repo_root) as env:
        return ensure_preflight(jobs, SUBMISSION, env, root=repo_root, cache=cache, on_info=info.append)  # type: ignore[arg-type]


def test_a_passing_preflight_is_cached_and_the_next_one_runs_no_job(repo_root: Path, tmp_path: Path) -> None:
    """First: one preflight job, deleted because it passed. Second, same nodes and runtime_env:
    no job, an empty result, and a line saying the cached result was used."""
    jobs, cache, info = FakeJobsApi(on_submit=_reporting(PASS)), PreflightCache(tmp_path / "pf"), []
    assert _ensure(jobs, repo_root, cache, info) == [PASS]
    assert len(jobs.submitted) == 1 and jobs.submitted[0].startswith(PREFLIGHT_JOB_PREFIX)
    assert jobs.deleted == jobs.submitted and "every check passed on 1 node(s)" in info[-1]
    assert _ensure(jobs, repo_root, cache, info) == []
    assert len(jobs.submitted) == 1 and info[-1].endswith("(cached)")


def test_a_new_node_invalidates_the_cached_result(repo_root: Path, tmp_path: Path) -> None:
    """Another alive node: the cache key differs, the preflight job runs again."""
    jobs, cache = FakeJobsApi(on_submit=_reporting(PASS)), PreflightCache(tmp_path / "pf")
    _ensure(jobs, repo_root, cache, [])
    jobs.nodes.append({"node_id": "n2", "node_ip": "10.0.0.2", "state": "ALIVE"})
    _ensure(jobs, repo_root, cache, [])
    assert len(jobs.submitted) == 2


def test_a_failing_preflight_refuses_keeps_its_job_and_is_not_cached(repo_root: Path, tmp_path: Path) -> None:
    """A failed check: PreflightFailed naming node and check; the job is kept for its logs; the
    next preflight runs again."""
    jobs, cache = FakeJobsApi(on_submit=_reporting(PASS, DOWN)), PreflightCache(tmp_path / "pf")
    with pytest.raises(PreflightFailed) as info:
        _ensure(jobs, repo_root, cache, [])
    assert (info.value.node, info.value.check) == ("10.0.0.1 (head n1)", "nats") and jobs.deleted == []
    with pytest.raises(PreflightFailed):
        _ensure(jobs, repo_root, cache, [])
    assert len(jobs.submitted) == 2


def test_doctor_s_cluster_half_runs_a_fresh_job_and_stores_a_pass_for_submit(
    repo_root: Path, tmp_path: Path
) -> None:
    """check_nodes without reuse (doctor) runs the job even when a pass is cached, and stores its
    pass, which submit's preflight (reuse) then takes: one job for doctor then submit."""
    jobs, cache = FakeJobsApi(on_submit=_reporting(PASS)), PreflightCache(tmp_path / "pf")
    with staged_runtime_env(SUBMISSION, repo_root) as env:
        expectations = node_expectations(SUBMISSION, root=repo_root)
        for _ in range(2):
            assert check_nodes(jobs, SUBMISSION, env, expectations, cache=cache) == [PASS]  # type: ignore[arg-type]
    assert len(jobs.submitted) == 2
    assert _ensure(jobs, repo_root, cache, []) == [] and len(jobs.submitted) == 2


def test_a_job_that_ends_without_a_report_is_a_row_for_the_driver_s_node(repo_root: Path) -> None:
    """The runtime_env failed to build on the driver's node: one runtime-env row naming that
    node (Ray's message in it), not an exception."""

    def env_failed(job: FakeJob) -> None:
        job.status, job.driver_node_id = JobStatus.FAILED, "n1"
        job.error_type, job.message = "RUNTIME_ENV_SETUP_FAILURE", "Failed to set up runtime env: no conda"

    jobs: Any = FakeJobsApi(on_submit=env_failed)
    with staged_runtime_env(SUBMISSION, repo_root) as env:
        checks = check_nodes(jobs, SUBMISSION, env, node_expectations(SUBMISSION, root=repo_root))
    assert [(c.name, c.status, c.node, c.node_id) for c in checks] == [
        ("runtime-env", FAIL, "10.0.0.1 (head n1)", "n1")
    ]
    assert "no conda" in checks[0].detail


def test_refusal_names_every_failing_node_check_and_fix() -> None:
    """PreflightFailed names the first node and check, and lists each failure with its fix."""
    exc = preflight_failed(
        [
            Check(
                "module nats",
                FAIL,
                "nats-py==2.16.0 is not importable",
                "use --env pinned",
                node="10.0.0.2 (ab)",
            ),
            Check("disk", FAIL, "0.1 GiB free", "free space", node="10.0.0.1 (head cd)"),
        ]
    )
    assert (exc.node, exc.check) == ("10.0.0.2 (ab)", "module nats")
    assert "10.0.0.2 (ab): module nats: nats-py==2.16.0 is not importable. Fix: use --env pinned" in str(exc)
    assert len(exc.failures) == 2 and "was not submitted" in str(exc)


def test_a_passed_job_whose_delete_fails_is_deleted_on_a_later_try(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy dashboard that misses the first delete (an error, or an answer that it deleted
    nothing) does not leave the passed job in the list: it is tried again."""
    from swe_fleet.errors import DashboardUnreachable
    from swe_fleet.preflight import job as preflight_job

    monkeypatch.setattr(preflight_job, "DELETE_PAUSE_S", 0.0)
    jobs = FakeJobsApi(on_submit=_reporting(PASS))
    delete, answers = jobs.delete, [DashboardUnreachable("timed out", url=jobs.url), False]

    def flaky_delete(job_id: str) -> bool:
        if answers:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return delete(job_id)

    jobs.delete = flaky_delete  # type: ignore[method-assign]
    assert _ensure(jobs, repo_root, PreflightCache(tmp_path / "pf"), []) == [PASS]
    assert jobs.deleted == jobs.submitted and jobs.jobs == {}
