"""The council job's driver: what ``jobs/council.py`` runs on the cluster.

Exit codes (:mod:`swe_fleet.exit_codes`; the job's status follows them): ``OK`` every event
published and every task ``decided`` or ``tied``; ``JOB_FAILED`` the LLM backend failed (it did
not start, or a whole batch failed; every affected response still got its
``agent.response.failed`` event and every task its result) or a task's outcome is ``failed``
(no proposal, or fewer votes than the quorum: the reason names the tasks); ``BAD_INPUT`` the
spec is invalid; ``PUBLISH_FAILED`` events could not be published (those not acknowledged are in
the outbox named in the log); ``TERMINATED`` the driver was stopped (SIGTERM). Every failing
exit first tries to publish ``council.job.failed``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import nats.errors
import ray
import structlog

from swe_fleet._logging import configure_logging
from swe_fleet.addresses import DEFAULT_NAMESPACE
from swe_fleet.council.deliberation import DeliberationReport, run_deliberation
from swe_fleet.errors import ConfigError, LLMError, OutboxWritten, PublishError, SpecError
from swe_fleet.events import CouncilJobFailed
from swe_fleet.exit_codes import ExitCode
from swe_fleet.llm.backends import build_generator
from swe_fleet.llm.base import UnavailableBackend
from swe_fleet.nats.checkpoints import KVCheckpoints
from swe_fleet.nats.connection import close_nats, connect_nats
from swe_fleet.nats.policy import PublishPolicy
from swe_fleet.nats.publisher import JetStreamPublisher
from swe_fleet.nats.results import BUCKET as RESULTS_BUCKET
from swe_fleet.nats.results import CouncilRecord, ResultsStore
from swe_fleet.reasons import one_line
from swe_fleet.spec import CouncilSpec

log = structlog.get_logger(__name__)


#: Ray passes the job's metadata (with its Jobs API submission id: our job id) to the driver in this variable.
_RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_id_from_ray(environ: dict[str, str] | None = None) -> str | None:
    """The running job's ``job_id`` (Ray's Jobs API submission id of this attempt), or None
    outside a submitted job. Not the deliberation's ``submission_id``: ``--submission-id`` gives that."""
    raw = (environ if environ is not None else dict(os.environ)).get(_RAY_JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        meta = json.loads(raw).get("metadata") or {}
    except ValueError:
        return None
    value = meta.get("job_submission_id")
    return str(value) if value else None


def run_council_job(spec_path: Path, *, nats_url: str | None, submission_id: str | None) -> int:
    """Load the spec, run the council on the engine backend, publish every event."""
    configure_logging(json=True)
    try:
        spec = CouncilSpec.from_file(spec_path).with_overrides(nats_url=nats_url)
    except SpecError as exc:
        log.error("spec.invalid", error=str(exc))
        return ExitCode.BAD_INPUT
    job_id = job_id_from_ray() or f"local-{uuid.uuid4().hex[:12]}"
    sid = submission_id or job_id
    structlog.contextvars.bind_contextvars(submission_id=sid, job_id=job_id, council=spec.name)
    ray.init(namespace=os.environ.get("RAY_NAMESPACE") or DEFAULT_NAMESPACE, log_to_driver=True)
    try:
        return asyncio.run(_run(spec, sid, job_id))
    finally:
        ray.shutdown()


async def _run(spec: CouncilSpec, submission_id: str, job_id: str) -> int:
    try:
        publisher = await JetStreamPublisher.connect(spec.publish)
    except (PublishError, ConfigError) as exc:
        # NATS unreachable or refusing this node's credentials (NATS_* on the node), or those
        # variables naming files that are not there: nothing can be published, not even why.
        log.error("publish.unreachable", error=str(exc))
        return ExitCode.PUBLISH_FAILED
    # `ray job stop` sends SIGTERM (SIGKILL a few seconds later): turn it into a cancellation
    # so this attempt can still say that it failed.
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main is not None:
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
    drain = True
    try:
        code, reason = await _run_council(spec, submission_id, publisher)
        drain = code != ExitCode.PUBLISH_FAILED
        if code == ExitCode.PUBLISH_FAILED:
            # Short bound: NATS just failed us; the reason is in the job log either way.
            await _publish_job_failed(publisher, spec, submission_id, job_id, reason, 5)
        elif code != ExitCode.OK:
            # E.g. an engine that could not start: every slot has its failed event, and the
            # job says once, for every consumer and for `submit`, why it failed.
            await _publish_job_failed(
                publisher, spec, submission_id, job_id, reason, spec.publish.retry_budget_s
            )
        return code
    except asyncio.CancelledError:
        log.error("council.stopped")
        await _publish_job_failed(publisher, spec, submission_id, job_id, "stopped (SIGTERM)", 2)
        return ExitCode.TERMINATED
    except Exception as exc:
        # Whatever went wrong, consumers learn that this attempt will publish nothing more.
        log.exception("council.crashed")
        reason = one_line(f"{type(exc).__name__}: {exc}")
        await _publish_job_failed(publisher, spec, submission_id, job_id, reason, spec.publish.retry_budget_s)
        return ExitCode.JOB_FAILED
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await publisher.close(drain=drain)


async def _publish_job_failed(
    publisher: JetStreamPublisher,
    spec: CouncilSpec,
    submission_id: str,
    job_id: str,
    reason: str,
    bound_s: float,
) -> None:
    event = CouncilJobFailed(
        submission_id=submission_id, council=spec.name, task_id="*", reason=reason, job_id=job_id
    )
    try:
        await asyncio.wait_for(publisher.publish(event), bound_s)
    except (PublishError, TimeoutError) as exc:
        log.error("job_failed.unpublished", error=str(exc))


async def _open_checkpoints(spec: CouncilSpec) -> tuple[Any, KVCheckpoints]:
    nc = await connect_nats(
        spec.publish.nats_url, timeout_s=spec.publish.connect_timeout_s, name="swe-fleet-ckpt"
    )
    try:
        policy = PublishPolicy.from_spec(spec.publish)
        return nc, await KVCheckpoints.open(nc.jetstream(timeout=spec.publish.ack_timeout_s), policy)
    except BaseException:
        await close_nats(nc)
        raise


async def _store_results(
    nc: Any, spec: CouncilSpec, submission_id: str, report: DeliberationReport | None
) -> None:
    """Keep the council in the results store: at its start (``report`` None: the spec, no
    results) and once every task has its result (their events are on the stream already). A
    store that cannot be written is logged, not fatal: it is a late reader's shortcut, the
    events are the record."""
    if report is not None and {r.task_id for r in report.results} != {t.id for t in spec.tasks}:
        return
    record = CouncilRecord(
        submission_id=submission_id,
        council=spec.name,
        spec=spec.model_dump(mode="json"),
        results=report.results if report is not None else [],
        complete=report is not None,
    )
    try:
        store = await ResultsStore.open(
            nc.jetstream(timeout=spec.publish.ack_timeout_s),
            PublishPolicy.from_spec(spec.publish),
            ttl_s=spec.publish.results_ttl_s,
        )
        stored = await store.put(record)
    except (PublishError, TimeoutError, nats.errors.Error) as exc:
        log.warning("results.unstored", error=str(exc) or type(exc).__name__)
        return
    log.info("results.stored", bucket=RESULTS_BUCKET, stored=stored, complete=record.complete)


async def _run_council(
    spec: CouncilSpec, submission_id: str, publisher: JetStreamPublisher
) -> tuple[ExitCode, str]:
    """Run the deliberation; the exit code and, when it is not OK, why (one line)."""
    ckpt_nc, checkpoints = await _open_checkpoints(spec)
    try:
        generator = build_generator(spec, client=submission_id)
    except BaseException:
        await close_nats(ckpt_nc)
        raise
    start_error: str | None = None
    nats_failed = False
    try:
        try:
            await generator.start()
        except LLMError as exc:
            start_error = str(exc)
            log.error("backend.unavailable", error=start_error)
        active = UnavailableBackend(f"LLM backend unavailable: {start_error}") if start_error else generator
        await _store_results(ckpt_nc, spec, submission_id, None)
        report = await run_deliberation(
            spec, submission_id=submission_id, generator=active, publisher=publisher, checkpoints=checkpoints
        )
        await _store_results(ckpt_nc, spec, submission_id, report)
    except OutboxWritten as exc:
        # Nothing is lost: the unacknowledged events wait in the outbox for `swe-fleet outbox replay`.
        nats_failed = True
        log.error("publish.outbox", outbox=str(exc.path), count=exc.count, error=str(exc))
        return ExitCode.PUBLISH_FAILED, (
            f"{exc.count} events were not acknowledged by NATS; they are in the outbox {exc.path} "
            f"(swe-fleet outbox replay {exc.path})"
        )
    except PublishError as exc:
        # Checkpoint saves and loads (retried like every publish): the message names the operation.
        nats_failed = True
        log.error("publish.failed", error=str(exc), subject=exc.subject, key=exc.key)
        return ExitCode.PUBLISH_FAILED, str(exc)
    finally:
        await generator.close()
        await close_nats(ckpt_nc, drain=not nats_failed)
    log.info(
        "council.done",
        backend=spec.backend,
        completed=report.completed,
        failed=report.failed,
        tasks=len(report.results),
        phases=len(report.phase_seconds),
        llm_calls=generator.stats.calls,
        replica_calls=generator.stats.replica_calls,
        output_tokens=generator.stats.output_tokens,
        generate_seconds=round(generator.stats.generate_seconds, 3),
        phase_seconds=report.phase_seconds,
        phase_requests=report.phase_requests,
        backend_errors=report.backend_errors,
        resumed_after=report.resumed_after,
        schedule=spec.protocol.schedule,
        task_seconds=report.task_seconds,
        engine_timelines=generator.stats.replica_timelines,
    )
    if start_error or report.backend_errors:
        # Every response has its event (failed ones say why), but the council did not really run.
        errors = report.backend_errors
        why = start_error or f"{len(errors)} LLM backend errors, the first: {errors[0][:300]}"
        return ExitCode.JOB_FAILED, why
    undecided = [r for r in report.results if r.outcome == "failed"]
    if undecided:
        # Every slot has its event and every task its result, but the council reached no
        # outcome for these: the job must not look like a success.
        said = "; ".join(f"{r.task_id}: {r.reason}" for r in undecided)
        return ExitCode.JOB_FAILED, f"no outcome for {len(undecided)} of {len(report.results)} tasks: {said}"
    return ExitCode.OK, ""
