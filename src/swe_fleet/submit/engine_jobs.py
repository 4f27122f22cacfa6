"""``swe-fleet engine up | status | down``, client side: the engine pool job and its report.

The job (``jobs/engine.py``, :mod:`swe_fleet.driver.engine_job`) runs in a council's runtime_env
with ``entrypoint_num_cpus=0`` and prints one report line that :func:`run_engine_job` reads back
from its logs. Waiting is bounded; a job that ends without its report is a
:class:`~swe_fleet.errors.SubmissionError` naming the job and its last log lines.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import uuid
from typing import Any

import swe_fleet
from swe_fleet.errors import JobWaitTimeout, SubmissionError, SweFleetError
from swe_fleet.reasons import one_line
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit import DEFAULT_ENGINE_JOB_TIMEOUT_S
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.runtime_env import ENGINE_FILE, STAGED_SPEC_FILE, staged_engine_env
from swe_fleet.submit.wait import wait_until_terminal

#: The line the engine job prints (and the client looks for in its logs).
ENGINE_REPORT_MARKER = "SWE_FLEET_ENGINE_REPORT "
ENGINE_JOB_PREFIX = "swe-fleet-engine-"


def parse_engine_report(logs: str) -> dict[str, Any] | None:
    """The last report line in an engine job's logs, or None."""
    for line in reversed(logs.splitlines()):
        if line.startswith(ENGINE_REPORT_MARKER):
            try:
                doc = json.loads(line[len(ENGINE_REPORT_MARKER) :])
            except ValueError:
                return None
            return doc if isinstance(doc, dict) else None
    return None


def run_engine_job(
    jobs: JobsApi,
    op: str,
    *,
    env_kind: str = "pinned",
    spec: CouncilSpec | None = None,
    pool: str | None = None,
    timeout_s: float = DEFAULT_ENGINE_JOB_TIMEOUT_S,
) -> dict[str, Any]:
    """Run the engine job ``op`` (``up`` needs ``spec``) and return its report: ``op``,
    ``replicas`` (each replica's status), ``stopped`` (names), ``error`` (``up`` that failed).

    A job that reported is deleted afterwards (the report says everything).

    Raises:
        DashboardUnreachable / SubmissionError: the Jobs API failed, or the job ended without
            its report (naming the job and what its log says).
        JobWaitTimeout: the job did not end within ``timeout_s`` (it was stopped).
    """
    argv = ["python", ENGINE_FILE, op]
    if spec is not None:
        argv += ["--spec", STAGED_SPEC_FILE]
    if pool:
        argv += ["--pool", pool]
    job_id = f"{ENGINE_JOB_PREFIX}{op}-{uuid.uuid4().hex[:12]}"
    with staged_engine_env(env_kind, spec.to_json() if spec is not None else None) as runtime_env:
        jobs.submit_job(
            job_id=job_id,
            entrypoint=shlex.join(argv),
            runtime_env=runtime_env,
            metadata={"swe_fleet_engine": op, "swe_fleet_version": swe_fleet.__version__},
        )
    try:
        status = wait_until_terminal(jobs, job_id, timeout_s=timeout_s)
    except JobWaitTimeout:
        with contextlib.suppress(SweFleetError):
            jobs.stop(job_id)
        raise
    logs = jobs.logs(job_id)
    report = parse_engine_report(logs)
    if report is None:
        tail = one_line("\n".join(logs.splitlines()[-15:]) or jobs.info(job_id).message or "")
        raise SubmissionError(
            f"engine job {job_id} ended {status.value} without a report: {tail}; see `ray job logs {job_id}`"
        )
    with contextlib.suppress(SweFleetError):
        jobs.delete(job_id)
    report["job_id"] = job_id
    report["status"] = status.value
    return report
