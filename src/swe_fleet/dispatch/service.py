"""The dispatcher service: ``council.request`` events become Ray jobs, exactly once; bad requests
become dead letters.

::

    council.request ─► validate ─► reserve a slot (ledger) ─► submit (Jobs API; submission id
    derived from request_id) ─► council.job.submitted ─► ack
    follower (follower.py), every poll_s: job status ─► council.job.running ─► succeeded | failed | stopped

Exactly once, whatever crashes in between:

- **the job**: its submission id is :func:`~swe_fleet.dispatch.requests.submission_id_for` the
  request id, and :func:`~swe_fleet.submit.submission.submit_council` finds the job an earlier
  delivery started (same request hash in its metadata) instead of starting a second one. A
  *different* request under a used id is a conflict: dead-lettered, the first job untouched.
- **the request** is acked only after its ``submitted`` event is stored; a crash before that
  redelivers it (after the consumer's ack wait), and the redelivery finds the job.
- **status events**: published through the write-ahead intent of :mod:`~swe_fleet.dispatch.status`,
  so no restart, however late, publishes a state twice.

Backpressure: at most ``max_in_flight`` jobs are not terminal (reservations included, also
those a previous run left: the :class:`~swe_fleet.dispatch.ledger.Ledger` knows them). The
dispatcher fetches one request only when a slot is free, so waiting requests stay in the stream:
no deliveries, no redeliveries. A submission that fails (the Jobs API is away) is nak'ed with a
growing delay, and pulling pauses for as long.

Bad requests (not JSON, invalid spec, unknown fields, a conflicting id, a request that failed
``max_attempts`` deliveries) go to ``council.request.dead`` with the payload and the reason and
are terminated; the dispatcher goes on.

SIGTERM (or SIGINT): stop pulling; the submission under way finishes, its event is published and
it is acked; then exit. Jobs still running are followed by the next dispatcher (the ledger
knows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog

from swe_fleet._tasks import cancel_and_wait
from swe_fleet.council.budget import check_token_budget
from swe_fleet.dispatch.config import DispatcherConfig
from swe_fleet.dispatch.follower import RETRYABLE_ERRORS, JobFollower, first_job_id
from swe_fleet.dispatch.ledger import Ledger
from swe_fleet.dispatch.requests import CouncilRequestDead, decode_request, resolve_spec, submission_id_for
from swe_fleet.dispatch.status import StatusPublisher
from swe_fleet.errors import (
    DashboardUnreachable,
    DispatchError,
    InvalidRequest,
    PublishError,
    SpecError,
    SubmissionConflict,
)
from swe_fleet.events import AGENT_RESPONSES_SUBJECTS, COUNCIL_REQUEST, COUNCIL_REQUESTS_SUBJECTS
from swe_fleet.llm.limits import model_limits
from swe_fleet.nats.connection import open_jetstream
from swe_fleet.nats.policy import TRANSIENT_ERRORS, PublishPolicy
from swe_fleet.nats.publisher import JetStreamPublisher
from swe_fleet.nats.pull import PullLoop, Subscription, sleep_unless
from swe_fleet.nats.streams import StreamRequirement
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.submission import submit_council

log = structlog.get_logger(__name__)


@dataclass
class DispatchStats:
    """What one run of the dispatcher did."""

    dispatched: int = 0
    dead_lettered: int = 0
    retried: int = 0
    in_flight_at_start: int = 0
    forgotten: int = 0


def fits_its_model(spec: CouncilSpec, request_id: str) -> None:
    """The token budget check of ``swe-fleet submit``, as an :class:`InvalidRequest` (its limits
    read from here: the model's files or the server, when this host has them)."""
    try:
        check_token_budget(spec, model_limits(spec), source=f"request {request_id}")
    except SpecError as exc:
        raise InvalidRequest(str(exc), request_id=request_id) from None


def retry_delay_s(deliveries: int, cap_s: float = 60.0) -> float:
    """Wait before delivering a request again after its ``deliveries``-th attempt failed."""
    return float(min(2.0 * 2 ** max(deliveries - 1, 0), cap_s))


@dataclass
class _Started:
    """What :meth:`Dispatcher.run` sets up before it pulls."""

    ledger: Ledger
    status: StatusPublisher
    dead: JetStreamPublisher


class Dispatcher:
    """Turns requests into jobs (see the module docstring); a :class:`JobFollower` follows them."""

    def __init__(self, config: DispatcherConfig, jobs: JobsApi) -> None:
        self.config = config
        self.stats = DispatchStats()
        self._jobs = jobs
        self._resume_at = 0.0
        self._started: _Started | None = None

    @property
    def in_flight(self) -> int:
        """Requests whose job is not terminal (0 before :meth:`run` loaded the ledger)."""
        return self._started.ledger.in_flight if self._started else 0

    def _on(self) -> _Started:
        if self._started is None:  # pragma: no cover - run() sets it first
            raise DispatchError("the dispatcher is not started")
        return self._started

    async def run(self, stop: asyncio.Event) -> DispatchStats:
        """Serve until ``stop`` is set (see the module docstring); return what was done.

        Raises:
            NatsUnreachable: NATS did not answer at start, or stayed away for longer than
                ``outage_budget_s``.
            StreamConfigMismatch: a stream exists with a config the dispatcher cannot use.
        """
        cfg = self.config
        conn = await open_jetstream(
            cfg.nats_url,
            name="swe-fleet-dispatch",
            connect_timeout_s=cfg.connect_timeout_s,
            streams=[
                StreamRequirement(cfg.requests_stream, COUNCIL_REQUESTS_SUBJECTS),
                StreamRequirement(cfg.events_stream, AGENT_RESPONSES_SUBJECTS),
            ],
        )
        try:
            async with conn.setting_up():
                policy = PublishPolicy()
                events = JetStreamPublisher(conn.nc, cfg.events_stream, policy, url=cfg.nats_url)
                ledger = await Ledger.open(conn.js, timeout_s=conn.bound_s)
                status = StatusPublisher(ledger, events, conn.js, cfg.events_stream, timeout_s=conn.bound_s)
                dead = JetStreamPublisher(conn.nc, cfg.requests_stream, policy, url=cfg.nats_url)
                self._started = _Started(ledger, status, dead)
                records, self.stats.forgotten = await ledger.load()
                await status.resolve_left_over(records)
                self.stats.in_flight_at_start = ledger.in_flight
                # The durable request consumer, created when missing.
                sub = Subscription(
                    conn.nc,
                    await conn.bounded(
                        conn.js.pull_subscribe(
                            COUNCIL_REQUEST,
                            durable=cfg.durable,
                            stream=cfg.requests_stream,
                            config=cfg.consumer_config(),
                        )
                    ),
                )
            log.info(
                "dispatch.started",
                durable=cfg.durable,
                in_flight=self.in_flight,
                max_in_flight=cfg.max_in_flight,
                forgotten=self.stats.forgotten,
            )
            follower = JobFollower(cfg, self._jobs, ledger, status)
            following = asyncio.create_task(follower.run(stop), name="dispatch-follow")
            try:
                await self._pull(sub, stop)
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await following
                await sub.unsubscribe()
        finally:
            await conn.close()
        log.info("dispatch.stopped", dispatched=self.stats.dispatched, dead=self.stats.dead_lettered)
        return self.stats

    # ---- pulling requests ------------------------------------------------------------------

    async def _pull(self, sub: Subscription, stop: asyncio.Event) -> None:
        cfg = self.config
        pull = PullLoop(
            sub,
            batch=1,
            fetch_wait_s=cfg.fetch_wait_s,
            policy=cfg.outage_policy(),
            url=cfg.nats_url,
            doing="fetching requests",
            hint=(
                f"restart the dispatcher when NATS is back: the durable {cfg.durable!r} and the "
                "ledger resume where it stopped"
            ),
            log_as="dispatch",
            sleep=functools.partial(sleep_unless, stop),
        )
        async for msgs in pull.batches(ready=functools.partial(self._ready_to_fetch, stop)):
            for msg in msgs:
                if stop.is_set():
                    # Pulled after the stop: hand it back at once for the next dispatcher.
                    with contextlib.suppress(*TRANSIENT_ERRORS):
                        await msg.nak()
                    continue
                await self._handle(msg)

    async def _ready_to_fetch(self, stop: asyncio.Event) -> bool:
        """Wait until a request may be fetched (a slot is free, submissions are not paused);
        False once ``stop`` is set."""
        cfg = self.config
        ledger = self._on().ledger
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            ledger.slot_freed.clear()
            if ledger.in_flight >= cfg.max_in_flight:
                # Backpressure: nothing is fetched, so waiting requests are not even delivered.
                await sleep_unless(stop, cfg.fetch_wait_s, also=ledger.slot_freed)
                continue
            if (delay := self._resume_at - loop.time()) > 0:
                await sleep_unless(stop, min(delay, cfg.fetch_wait_s))
                continue
            return True
        return False

    # ---- handling one request --------------------------------------------------------------

    async def _handle(self, msg: Any) -> None:
        """Dead-letter, dispatch, or hand back (with a delay) one request; never raises."""
        meta = msg.metadata
        deliveries = int(meta.num_delivered or 1)
        try:
            request = decode_request(msg.data)
            spec = resolve_spec(request, self.config.spec_dir)
            # A council whose requests cannot fit its model's context would only fail as a job.
            await asyncio.to_thread(fits_its_model, spec, request.request_id)
        except InvalidRequest as exc:
            await self._dead_letter(msg, exc.reason, exc.request_id)
            return
        rid = request.request_id
        bound = log.bind(request_id=rid, seq=meta.sequence.stream, delivery=deliveries)
        async with self._on().ledger.holding(rid):
            try:
                if deliveries > self.config.max_attempts:
                    await self._give_up(msg, rid, deliveries)
                else:
                    await self._dispatch(msg, rid, spec, bound)
            except RETRYABLE_ERRORS as exc:
                await self._retry_later(msg, deliveries, exc, bound)
            except Exception as exc:
                # A bug must not stop the service: the request comes back later, and after
                # max_attempts deliveries it is dead-lettered with its payload.
                bound.exception("dispatch.unexpected_error")
                await self._retry_later(msg, deliveries, exc, bound)

    async def _dispatch(self, msg: Any, rid: str, spec: CouncilSpec, bound: Any) -> None:
        cfg = self.config
        ledger, status = self._on().ledger, self._on().status
        # The heartbeat covers everything up to the ack: ledger writes and the publish can
        # take longer than ack_wait too, and a redelivery meanwhile would count as an attempt.
        async with _heartbeat(msg, cfg.ack_wait_s):
            record, reserved_now = await ledger.reserve(rid, submission_id_for(rid), spec.name)
            # A record with a job: an earlier delivery submitted it and lost its ack. Submitting
            # again finds that job (or refuses a different request under the same id), but once
            # Ray has deleted the finished job it would start a second run: then only ack.
            job_gone = (
                record.job_id is not None
                and await asyncio.to_thread(self._jobs.find_job, record.job_id) is None
            )
            if not job_gone:
                submission = CouncilSubmission(
                    spec=spec,
                    env_kind=cfg.env_kind,
                    nats_url=cfg.job_nats_url or cfg.nats_url,
                    submission_id=record.submission_id,
                )
                try:
                    submitted = await asyncio.to_thread(submit_council, self._jobs, submission)
                    bound.info(
                        "dispatch.submitted" if submitted.created else "dispatch.found_existing",
                        job_id=submitted.job_id,
                    )
                except SubmissionConflict as exc:
                    if reserved_now:
                        await ledger.release(record)
                    await self._dead_letter(msg, str(exc), rid)
                    return
                record = await ledger.mark_submitted(record, submitted.job_id, submitted.dashboard_url)
            else:
                bound.info("dispatch.job_gone_not_resubmitted", job_id=record.job_id)
            record = await status.publish_once(record, record.status_event("submitted"))
            await msg.ack_sync(timeout=cfg.connect_timeout_s)
        self.stats.dispatched += 1
        bound.info("dispatch.acked", job_id=record.job_id, in_flight=self.in_flight)

    async def _retry_later(self, msg: Any, deliveries: int, exc: BaseException, bound: Any) -> None:
        delay = retry_delay_s(deliveries)
        if isinstance(exc, DashboardUnreachable):
            # The cluster is away, not this request: do not pull more requests meanwhile.
            self._resume_at = asyncio.get_running_loop().time() + delay
        bound.warning("dispatch.retry_later", error=f"{type(exc).__name__}: {exc}", delay_s=delay)
        self.stats.retried += 1
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await msg.nak(delay=delay)

    async def _give_up(self, msg: Any, rid: str, deliveries: int) -> None:
        ledger = self._on().ledger
        record = await ledger.get(rid)
        if record is not None and record.job_id is None:
            job_id = first_job_id(record)
            if await asyncio.to_thread(self._jobs.find_job, job_id) is None:
                await ledger.release(record)
            else:
                record = await ledger.mark_submitted(record, job_id, self._jobs.url)
        if record is not None and record.job_id is not None:
            # Its job runs: nothing to give up on. Only the acks or the submitted event failed;
            # the follower publishes the job's status events, starting with submitted.
            await msg.ack_sync(timeout=self.config.connect_timeout_s)
            return
        await self._dead_letter(
            msg,
            f"not dispatched after {deliveries - 1} deliveries (max_attempts {self.config.max_attempts}); "
            "the dispatcher's log has each attempt's error",
            rid,
        )

    async def _dead_letter(self, msg: Any, reason: str, request_id: str | None) -> None:
        meta = msg.metadata
        dead = CouncilRequestDead.of(
            msg.data,
            reason=reason,
            request_id=request_id,
            stream_seq=meta.sequence.stream,
            deliveries=meta.num_delivered,
        )
        try:
            await self._on().dead.publish(dead)
        except PublishError as exc:
            # Not terminated: it comes back and is dead-lettered then (once, by its key).
            log.error("dispatch.dead_letter_failed", error=str(exc), request_id=request_id)
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await msg.nak(delay=retry_delay_s(meta.num_delivered or 1))
            return
        with contextlib.suppress(*TRANSIENT_ERRORS):  # not terminated: it is dead-lettered again, once
            await msg.term()
        self.stats.dead_lettered += 1
        log.warning("dispatch.dead_letter", request_id=request_id, reason=reason, seq=dead.stream_seq)


@contextlib.asynccontextmanager
async def _heartbeat(msg: Any, ack_wait_s: float) -> AsyncIterator[None]:
    """Tell JetStream the request is being worked on, so a slow submission is not redelivered."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(ack_wait_s / 3)
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await msg.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        await cancel_and_wait([task])


def run_dispatcher(config: DispatcherConfig) -> signal.Signals | None:
    """Run the dispatcher in this process until SIGTERM or SIGINT; return the signal.

    Raises:
        DashboardUnreachable / AddressError / SubmissionError: the Jobs API is not usable.
        NatsUnreachable / StreamConfigMismatch: see :meth:`Dispatcher.run`.
    """
    jobs = JobsApi(
        config.dashboard_url, auth_token=config.auth_token, request_timeout_s=config.request_timeout_s
    )

    async def main() -> signal.Signals | None:
        stop = asyncio.Event()
        received: list[signal.Signals] = []
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            log.info("dispatch.stopping", signal=sig.name)
            received.append(sig)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await Dispatcher(config, jobs).run(stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return received[0] if received else None

    return asyncio.run(main())
