"""The preflight job, client side: what every node must provide, the job, and its report.

The preflight job (``jobs/preflight.py``) is submitted through the Jobs API with the runtime_env
the council would get (:func:`swe_fleet.submit.runtime_env.staged_runtime_env`, the same call
the council's submission makes) and ``entrypoint_num_cpus=0``. It sends one task to every alive
node (:mod:`swe_fleet.preflight.node_check`) and prints a report line that
:func:`run_preflight_job` reads back from the job's logs. Waiting for it is bounded; a job that
fails before reporting (its runtime_env did not build on the driver's node) becomes a
``runtime-env`` row of that node.
"""

from __future__ import annotations

import contextlib
import shlex
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

import swe_fleet
from swe_fleet.errors import JobWaitTimeout, SubmissionError, SweFleetError
from swe_fleet.preflight import DEFAULT_PREFLIGHT_TIMEOUT_S
from swe_fleet.preflight.node_check import (
    CLUSTER,
    DEFAULT_MIN_FREE_DISK_GB,
    FAIL,
    RUNTIME_ENV_FIX,
    Check,
    NodeExpectations,
    Pin,
    node_label,
    one_line,
    parse_pins,
    parse_report,
)
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.runtime_env import PREFLIGHT_FILE, project_root
from swe_fleet.submit.wait import wait_until_terminal

log = structlog.get_logger(__name__)

#: The one pin list (relative to the checkout).
WORKER_PINS = Path("images") / "requirements-worker.txt"
PREFLIGHT_JOB_PREFIX = "swe-fleet-preflight-"


def read_worker_pins(root: Path | None = None) -> tuple[Pin, ...]:
    """The pin list ``images/requirements-worker.txt`` of the checkout.

    Raises:
        SubmissionError: unreadable, or a line that is not an exact pin.
    """
    path = (root or project_root()) / WORKER_PINS
    try:
        return parse_pins(path.read_text(), str(path))
    except OSError as exc:
        raise SubmissionError(f"cannot read the pin list {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SubmissionError(f"{exc}; the pin list holds exact pins only") from None


def node_task_bound(timeout_s: float) -> float:
    """The node tasks' share of the preflight bound; the rest is for the driver's own set-up
    (always within the bound: the nodes' rows must arrive before the client stops waiting)."""
    return 0.75 * timeout_s


def node_expectations(
    submission: CouncilSubmission,
    *,
    root: Path | None = None,
    timeout_s: float = DEFAULT_PREFLIGHT_TIMEOUT_S,
    min_free_disk_gb: float = DEFAULT_MIN_FREE_DISK_GB,
) -> NodeExpectations:
    """What every node must provide for ``submission``'s council.

    Raises:
        SubmissionError: the checkout's pin list is unreadable.
    """
    spec = submission.effective_spec()
    engine = spec.backend == "engine"
    return NodeExpectations(
        pins=read_worker_pins(root),
        swe_fleet_version=swe_fleet.__version__,
        nats_url=spec.publish.nats_url,
        llm_server_url=None if engine else spec.server.url,
        model=spec.model.name if engine else None,
        gpus_per_replica=spec.model.num_gpus if engine else 0.0,
        replicas=spec.model.replicas if engine else 1,
        min_free_disk_gb=min_free_disk_gb,
        env_kind=submission.env_kind,
        timeout_s=node_task_bound(timeout_s),
    )


def _driver_node(jobs: JobsApi, node_id: str | None) -> tuple[str, str]:
    """(label, node id) of the node a job's driver ran on (the head when Ray does not say)."""
    try:
        nodes = jobs.alive_nodes()
    except SweFleetError:
        nodes = []
    for n in nodes:
        if (node_id and n.get("node_id") == node_id) or (not node_id and n.get("is_head_node")):
            return node_label(str(n["node_ip"]), str(n["node_id"]), bool(n.get("is_head_node"))), str(
                n["node_id"]
            )
    return ("driver", node_id or "")


def _unreported_job(jobs: JobsApi, job_id: str, status: str, logs: str) -> Check:
    """The row for a preflight job that ended without its report."""
    info = jobs.info(job_id)
    message = info.message or ""
    label, node_id = _driver_node(jobs, info.driver_node_id)
    # error_type is Ray's JobErrorType (RUNTIME_ENV_SETUP_FAILURE); the message says "runtime env".
    if "RUNTIME_ENV" in str(info.error_type or "").upper() or "runtime env" in message.lower():
        return Check(
            "runtime-env",
            FAIL,
            f"the job's runtime_env could not be built on the driver's node: {one_line(message)}",
            RUNTIME_ENV_FIX,
            node=label,
            node_id=node_id,
        )
    tail = one_line("\n".join(logs.splitlines()[-15:]) or message)
    return Check(
        "preflight-job",
        FAIL,
        f"{job_id} ended {status} without a report: {tail}",
        f"see `ray job logs {job_id}` and `ray job status {job_id}`",
        node=CLUSTER,
    )


def run_preflight_job(
    jobs: JobsApi,
    submission: CouncilSubmission,
    runtime_env: dict[str, Any],
    expectations: NodeExpectations,
    *,
    timeout_s: float = DEFAULT_PREFLIGHT_TIMEOUT_S,
    on_info: Callable[[str], None] = lambda m: None,
) -> list[Check]:
    """Run the preflight job in ``runtime_env`` (bounded by ``timeout_s``); one row per node and check.

    A passing job is deleted afterwards; a failing one is kept for its logs.

    Raises:
        DashboardUnreachable / SubmissionError: the Jobs API failed.
    """
    job_id = PREFLIGHT_JOB_PREFIX + uuid.uuid4().hex[:12]
    jobs.submit_job(
        job_id=job_id,
        entrypoint=shlex.join(["python", PREFLIGHT_FILE, *expectations.to_argv()]),
        runtime_env=runtime_env,
        metadata={
            "swe_fleet_preflight": "1",
            "swe_fleet_version": swe_fleet.__version__,
            "council": submission.spec.name,
            "runtime_env": submission.env_kind,
        },
    )
    on_info(f"preflight: job {job_id} checks every node in the {submission.env_kind} runtime_env")
    try:
        status = wait_until_terminal(jobs, job_id, timeout_s=timeout_s)
    except JobWaitTimeout:
        with contextlib.suppress(SweFleetError):
            jobs.stop(job_id)
        return [
            Check(
                "preflight-job",
                FAIL,
                f"{job_id} did not finish within {timeout_s:g} s (it was stopped)",
                "raise --preflight-timeout (a first pip runtime_env can take minutes); "
                f"see `ray job logs {job_id}`",
                node=CLUSTER,
            )
        ]
    logs = jobs.logs(job_id)
    doc = parse_report(logs)
    if doc is None:
        return [_unreported_job(jobs, job_id, status.value, logs)]
    checks = [Check.from_dict(c) for c in doc.get("checks", [])]
    if not checks:
        checks = [Check("preflight-job", FAIL, f"{job_id} found no alive node", "start the cluster's nodes")]
    if not any(c.failed for c in checks):
        _delete_passed(jobs, job_id)
    return checks


#: Tries at deleting a passed preflight job (a busy dashboard can miss one), and the pause between.
DELETE_TRIES, DELETE_PAUSE_S = 3, 1.0


def _delete_passed(jobs: JobsApi, job_id: str) -> None:
    """A passed preflight job is deleted (it is noise in the job list); a delete that fails is
    tried again, then logged: the preflight passed either way."""
    for attempt in range(1, DELETE_TRIES + 1):
        try:
            if jobs.delete(job_id):
                return
            why = "the dashboard did not delete it"
        except SweFleetError as exc:
            why = str(exc)
        if attempt < DELETE_TRIES:
            time.sleep(DELETE_PAUSE_S)
    log.warning("preflight.job_not_deleted", job_id=job_id, error=why)
