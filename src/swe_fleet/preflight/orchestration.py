"""The one preflight flow, behind ``swe-fleet doctor`` and the preflight before ``swe-fleet submit``.

:func:`check_nodes` is the cluster half both use: the cache key of the nodes alive now, the
preflight job (:mod:`swe_fleet.preflight.job`) in the council's own runtime_env, and a passing
result stored in the cache (:mod:`swe_fleet.preflight.cache`). The two callers differ only in
policy:

- :func:`ensure_preflight` (``submit``, through :func:`preflight_hook`): reuses a result that
  passed on these nodes with this runtime_env, and refuses the submission
  (:class:`~swe_fleet.errors.PreflightFailed`) when a check fails;
- :func:`run_doctor` (``doctor``): the client's checks (:mod:`swe_fleet.preflight.client_checks`)
  first, then always a fresh preflight job; every outcome, a failing Jobs API included, is a row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from swe_fleet.errors import PreflightFailed, SubmissionError
from swe_fleet.preflight import DEFAULT_CHECK_TIMEOUT_S, DEFAULT_PREFLIGHT_TIMEOUT_S
from swe_fleet.preflight.cache import PreflightCache, cluster_preflight_key
from swe_fleet.preflight.client_checks import run_client_checks
from swe_fleet.preflight.job import node_expectations, run_preflight_job
from swe_fleet.preflight.node_check import (
    CLUSTER,
    DEFAULT_MIN_FREE_DISK_GB,
    FAIL,
    SKIP,
    Check,
    NodeExpectations,
)
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.runtime_env import staged_runtime_env
from swe_fleet.submit.submission import PreflightHook


def check_nodes(
    jobs: JobsApi,
    submission: CouncilSubmission,
    runtime_env: dict[str, Any],
    expectations: NodeExpectations,
    *,
    timeout_s: float = DEFAULT_PREFLIGHT_TIMEOUT_S,
    cache: PreflightCache | None = None,
    reuse_passed: bool = False,
    on_info: Callable[[str], None] = lambda m: None,
) -> list[Check]:
    """The cluster half: one row per alive node and check, from the preflight job in ``runtime_env``.

    A passing result is stored in ``cache`` under the key of the nodes alive before the run.
    With ``reuse_passed``, a result that passed on these nodes with this runtime_env and these
    expectations is used instead of a new job: the result is then empty.

    Raises:
        DashboardUnreachable / SubmissionError: the Jobs API failed.
    """
    key = cluster_preflight_key(jobs, runtime_env, expectations) if cache is not None else None
    if reuse_passed and cache is not None and key is not None:
        age = cache.passed_age(key)
        if age is not None:
            on_info(f"preflight: passed {age:.0f} s ago on these nodes with this runtime_env (cached)")
            return []
    checks = run_preflight_job(
        jobs, submission, runtime_env, expectations, timeout_s=timeout_s, on_info=on_info
    )
    if cache is not None and key is not None:
        cache.store(key, checks)  # stores passing results only
    return checks


def preflight_failed(failures: Sequence[Check]) -> PreflightFailed:
    """The error that refuses a submission: every failing node and check, with its fix."""
    lines = tuple(f"{c.node}: {c.name}: {c.detail}. Fix: {c.fix}" for c in failures)
    message = (
        "preflight failed, the council was not submitted:\n"
        + "\n".join(f"  - {line}" for line in lines)
        + "\n  (`swe-fleet doctor` shows every check; --skip-preflight submits anyway)"
    )
    return PreflightFailed(message, node=failures[0].node, check=failures[0].name, failures=lines)


def ensure_preflight(
    jobs: JobsApi,
    submission: CouncilSubmission,
    runtime_env: dict[str, Any],
    *,
    root: Path | None = None,
    timeout_s: float = DEFAULT_PREFLIGHT_TIMEOUT_S,
    min_free_disk_gb: float = DEFAULT_MIN_FREE_DISK_GB,
    cache: PreflightCache | None = None,
    on_info: Callable[[str], None] = lambda m: None,
) -> list[Check]:
    """Run the cluster preflight for ``submission`` unless ``cache`` says it passed; raise if it fails.

    Returns:
        The checks that ran (empty when the cached result was used).

    Raises:
        PreflightFailed: a check failed on some node (each failure named with its fix).
        DashboardUnreachable / SubmissionError: the Jobs API failed, or the pin list is unreadable.
    """
    expectations = node_expectations(
        submission, root=root, timeout_s=timeout_s, min_free_disk_gb=min_free_disk_gb
    )
    started = time.monotonic()
    checks = check_nodes(
        jobs,
        submission,
        runtime_env,
        expectations,
        timeout_s=timeout_s,
        cache=cache,
        reuse_passed=True,
        on_info=on_info,
    )
    if not checks:
        return checks  # passed before, on these nodes
    failures = [c for c in checks if c.failed]
    if failures:
        raise preflight_failed(failures)
    nodes = {c.node_id for c in checks if c.node_id}
    on_info(f"preflight: every check passed on {len(nodes)} node(s) in {time.monotonic() - started:.0f} s")
    return checks


def preflight_hook(
    jobs: JobsApi,
    *,
    timeout_s: float = DEFAULT_PREFLIGHT_TIMEOUT_S,
    cache: PreflightCache | None = None,
    on_info: Callable[[str], None] = lambda m: None,
) -> PreflightHook:
    """A ``preflight`` for :func:`~swe_fleet.submit.submission.submit_council`:
    :func:`ensure_preflight` in the runtime_env the new job gets."""

    def hook(submission: CouncilSubmission, runtime_env: dict[str, Any]) -> None:
        ensure_preflight(jobs, submission, runtime_env, timeout_s=timeout_s, cache=cache, on_info=on_info)

    return hook


def run_doctor(
    submission: CouncilSubmission,
    dashboard_url: str,
    token: str | None,
    *,
    check_timeout_s: float = DEFAULT_CHECK_TIMEOUT_S,
    cluster: bool = True,
    cluster_timeout_s: float = DEFAULT_PREFLIGHT_TIMEOUT_S,
    min_free_disk_gb: float = DEFAULT_MIN_FREE_DISK_GB,
    client_nats_url: str | None = None,
    root: Path | None = None,
    cache: PreflightCache | None = None,
    on_info: Callable[[str], None] = lambda m: None,
) -> list[Check]:
    """Every check: client side (NATS at ``client_nats_url`` when given, else where the cluster
    reaches it), then (``cluster``) the preflight job on every alive node.

    The cluster half runs in the runtime_env ``submission`` would be submitted with; a passing
    result is stored in ``cache`` (so a ``submit`` right after does not run it again).

    Raises:
        SubmissionError: the checkout has no pin list or runtime_envs (not a cluster problem).
    """
    checks = run_client_checks(
        submission.effective_spec(), dashboard_url, token, check_timeout_s, nats_url=client_nats_url
    )
    if not cluster:
        return checks
    if any(c.failed for c in checks if c.name in ("dashboard", "auth")):
        return [
            *checks,
            Check("nodes", SKIP, "the Jobs API is not usable from here (see above)", node=CLUSTER),
        ]
    expectations = node_expectations(
        submission, root=root, timeout_s=cluster_timeout_s, min_free_disk_gb=min_free_disk_gb
    )
    with staged_runtime_env(submission, root) as runtime_env:
        try:
            jobs = JobsApi(dashboard_url, auth_token=token, request_timeout_s=max(check_timeout_s, 10))
            node_checks = check_nodes(
                jobs,
                submission,
                runtime_env,
                expectations,
                timeout_s=cluster_timeout_s,
                cache=cache,
                on_info=on_info,
            )
        except SubmissionError as exc:  # the Jobs API failed mid-way: a row, not a crash
            node_checks = [
                Check("preflight-job", FAIL, str(exc), "check the dashboard and the Jobs API", node=CLUSTER)
            ]
    return [*checks, *node_checks]


def checks_as_json(checks: Sequence[Check]) -> list[dict[str, Any]]:
    """The rows as ``swe-fleet doctor --json`` prints them."""
    return [c.to_dict() for c in checks]
