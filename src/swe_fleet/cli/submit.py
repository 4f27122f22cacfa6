"""``swe-fleet submit``: a council job on a cluster, through the Jobs API."""

from __future__ import annotations

from contextlib import nullcontext

import click

from swe_fleet.cli._common import (
    ADDRESS_OPTION,
    CLIENT_NATS_URL_OPTION,
    ENV_OPTION,
    PREFLIGHT_TIMEOUT_OPTION,
    SPEC_ARGUMENT,
    TIMEOUT_OPTION,
    check_budget,
    err,
    guard,
    info,
    load_spec,
    nats_auth_options,
    out,
)
from swe_fleet.cli.render import print_lines
from swe_fleet.cli.watch import FOLLOW_DRAIN_S, Follower, live_council
from swe_fleet.exit_codes import ExitCode, for_job_status
from swe_fleet.report.progress import CouncilProgress
from swe_fleet.submit import DEFAULT_REQUEST_TIMEOUT_S


@click.command()
@nats_auth_options
@SPEC_ARGUMENT
@ADDRESS_OPTION
@click.option(
    "--nats-url",
    default=None,
    help="override the spec's publish.nats_url (as seen from the cluster)",
)
@CLIENT_NATS_URL_OPTION
@ENV_OPTION
@click.option("--submission-id", default=None, help="explicit id (default: derived from the request)")
@click.option("--wait/--no-wait", default=True, show_default=True, help="follow the job to a terminal state")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="if this request's job ended FAILED/STOPPED, run it again under the same id "
    "(it resumes from its checkpoint)",
)
@TIMEOUT_OPTION
@click.option("--logs/--no-logs", default=False, show_default=True, help="print the job's log lines")
@click.option(
    "--request-timeout",
    type=float,
    default=DEFAULT_REQUEST_TIMEOUT_S,
    show_default=True,
    help="seconds for each Jobs API request (a job submission waits at least 60)",
)
@click.option(
    "--skip-preflight",
    is_flag=True,
    help="submit without first checking the token budget and every node (a passing node check is cached "
    "per cluster and runtime_env)",
)
@PREFLIGHT_TIMEOUT_OPTION
def submit(
    spec_path: str,
    address: str | None,
    nats_url: str | None,
    client_nats_url: str | None,
    env_kind: str,
    submission_id: str | None,
    wait: bool,
    retry_failed: bool,
    timeout_s: float,
    logs: bool,
    request_timeout: float,
    skip_preflight: bool,
    preflight_timeout: float,
) -> None:
    """Submit a council job to a cluster through the Jobs API and follow it.

    Before a new job is submitted, a preflight job checks every alive node in the council's
    own runtime_env (pinned modules, swe-fleet version, NATS and the vLLM server from the node,
    GPUs, disk); when a check fails nothing is submitted and the exit code is 8. A passing
    preflight is cached per cluster (its alive nodes) and runtime_env.

    The same request twice finds the existing job (no second job); --retry-failed reruns a
    failed or stopped one, resuming from its checkpoint. Exit code follows the job. In a
    terminal (without --logs) the council is drawn live as a grid of tasks x phases while it
    runs, from its events on NATS (--client-nats-url where this machine reaches it).
    """
    from swe_fleet.addresses import auth_token_from_env, client_jobs_api_url
    from swe_fleet.cli.outcome import RETRY_HINT
    from swe_fleet.errors import SweFleetError
    from swe_fleet.preflight.cache import PreflightCache
    from swe_fleet.preflight.orchestration import preflight_hook
    from swe_fleet.submit.jobs_api import JobsApi
    from swe_fleet.submit.request import CouncilSubmission
    from swe_fleet.submit.submission import submit_council
    from swe_fleet.submit.wait import wait_until_terminal

    def body() -> int:
        spec = load_spec(spec_path)
        if not skip_preflight:
            check_budget(spec, spec_path)  # a spec that cannot fit: exit 3
        url = address or client_jobs_api_url()
        jobs = JobsApi(url, auth_token=auth_token_from_env(), request_timeout_s=request_timeout)
        hook = (
            None
            if skip_preflight
            else preflight_hook(
                jobs, timeout_s=preflight_timeout, cache=PreflightCache.default(), on_info=info
            )
        )
        done = submit_council(
            jobs,
            CouncilSubmission(spec=spec, env_kind=env_kind, nats_url=nats_url, submission_id=submission_id),
            retry_failed=retry_failed,
            preflight=hook,
        )
        verb = "submitted" if done.created else "already submitted"
        attempt = "" if done.job_id == done.submission_id else f" as Ray job {done.job_id}"
        err.print(f"{verb}: {done.submission_id}{attempt} ({done.dashboard_url})")
        out.print(done.submission_id)
        if not wait:
            return int(ExitCode.OK)
        # In a terminal the council is a live grid of tasks x phases (swe-fleet watch) while the
        # job runs, its events read from NATS where this client reaches it.
        follower = None
        if out.is_terminal and not logs:
            follower = Follower(
                CouncilProgress(spec.model_dump(mode="json")),
                client_nats_url or nats_url or spec.publish.nats_url,
                spec.publish.stream,
                done.submission_id,
            ).start()
        view = live_council(follower.progress, f"council {done.submission_id}") if follower else nullcontext()
        try:
            with view:
                status = wait_until_terminal(
                    jobs,
                    done.job_id,
                    timeout_s=timeout_s,
                    on_status=lambda s: err.print(f"job {done.job_id}: {s.value}"),
                    on_log_lines=print_lines if logs else None,
                )
                if follower is not None:  # the job's last events may still be on their way
                    follower.stop(drain_s=FOLLOW_DRAIN_S)
        except KeyboardInterrupt:
            try:
                jobs.stop(done.job_id)
                err.print(f"stopped job {done.job_id}")
            except SweFleetError as exc:
                err.print(f"could not stop job {done.job_id}: {exc}")
            raise
        if follower is not None:
            follower.stop()
            if follower.error:
                err.print(f"(the live view stopped: {follower.error})", markup=False)
        if status.value != "SUCCEEDED":
            from swe_fleet.cli.outcome import failure_lines

            for line in failure_lines(
                jobs, status=status.value, submission_id=done.submission_id, job_id=done.job_id,
                nats_url=client_nats_url or nats_url or spec.publish.nats_url, rerun=RETRY_HINT,
            ):  # fmt: skip
                err.print(line, markup=False)
        return int(for_job_status(status.value))

    guard(body)
