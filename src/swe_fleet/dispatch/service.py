"""Event-driven dispatcher: ``council.request`` events become Ray jobs, exactly once, and each
job's status is published once per state.

::

    council.request ─► validate ─► reserve a slot (ledger) ─► submit (Jobs API; submission id
    derived from request_id) ─► council.job.submitted ─► ack
    follower, every poll_s: job status ─► council.job.running ─► succeeded | failed | stopped

Exactly once, whatever crashes in between:

- **the job**: its submission id is :func:`submission_id_for` the request id, and
  :meth:`~swe_fleet.submit.client.CouncilJobClient.submit` finds the job an earlier delivery started
  (same request hash in its metadata) instead of starting a second one. A *different* request
  under a used id is a conflict: dead-lettered, the first job untouched.
- **the request** is acked only after its ``submitted`` event is stored; a crash before that
  redelivers it (after the consumer's ack wait), and the redelivery finds the job.
- **status events**: published through the :mod:`~swe_fleet.dispatch.ledger` (a write-ahead
  intent in a KV record, the event keyed by ``Nats-Msg-Id``, then the record), so no restart,
  however late, publishes a state twice.

Backpressure: at most ``max_in_flight`` jobs are not terminal (reservations included, also
those a previous run left). The dispatcher fetches one request only when a slot is free, so
waiting requests stay in the stream: no deliveries, no redeliveries. A submission that fails
(the Jobs API is away) is nak'ed with a growing delay, and pulling pauses for as long.

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
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nats.errors
import structlog
from ray.job_submission import JobStatus

from swe_fleet.dispatch.config import DispatcherConfig
from swe_fleet.dispatch.ledger import DispatchRecord, Ledger
from swe_fleet.errors import (
    DashboardUnreachable,
    DispatchError,
    InvalidRequest,
    NatsUnreachable,
    PublishError,
    SpecError,
    SubmissionConflict,
    SubmissionError,
)
from swe_fleet.events import (
    AGENT_RESPONSES_SUBJECTS,
    COUNCIL_REQUEST,
    COUNCIL_REQUESTS_SUBJECTS,
    CouncilRequestDead,
    CouncilRequested,
    JobState,
    decode_request,
    submission_id_for,
)
from swe_fleet.nats.publisher import (
    TRANSIENT_ERRORS,
    JetStreamPublisher,
    PublishPolicy,
    close_nats,
    connect_nats,
    ensure_stream,
)
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.client import CouncilJobClient, CouncilRequest

log = structlog.get_logger(__name__)

#: How much of a bad payload a dead letter carries (the rest is cut, and the cut is marked).
MAX_DEAD_PAYLOAD_CHARS = 256 * 1024

_TERMINAL_STATES: dict[JobStatus, JobState] = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "stopped",
}

#: What makes one request (or one follow-up of a job) worth trying again later.
_RETRYABLE = (SubmissionError, PublishError, DispatchError, TimeoutError, nats.errors.Error)
#: What a fetch of the next request can raise while NATS (or the consumer) is away.
_FETCH_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, nats.errors.Error)


@dataclass
class DispatchStats:
    """What one run of the dispatcher did."""

    dispatched: int = 0
    dead_lettered: int = 0
    retried: int = 0
    in_flight_at_start: int = 0
    forgotten: int = 0


def resolve_spec(request: CouncilRequested, spec_dir: Path | None) -> CouncilSpec:
    """The request's spec: its own, or the ``spec_ref`` file under ``spec_dir``.

    Raises:
        InvalidRequest: no ``spec_dir``, a reference leaving it, or an unreadable/invalid file.
    """
    if request.spec is not None:
        return request.spec
    ref = request.spec_ref or ""
    rid = request.request_id
    if spec_dir is None:
        raise InvalidRequest(
            f"spec_ref {ref!r}: this dispatcher has no --spec-dir; send the spec itself", request_id=rid
        )
    base = spec_dir.resolve()
    path = (base / ref).resolve()
    if ".." in PurePosixPath(ref).parts or not path.is_relative_to(base):
        raise InvalidRequest(f"spec_ref {ref!r} leaves the spec directory", request_id=rid)
    try:
        return CouncilSpec.from_file(path)
    except SpecError as exc:
        # The dispatcher's own directory layout is none of the requester's business.
        raise InvalidRequest(f"spec_ref {str(exc).replace(str(path), ref)}", request_id=rid) from None


def retry_delay_s(deliveries: int, cap_s: float = 60.0) -> float:
    """Wait before delivering a request again after its ``deliveries``-th attempt failed."""
    return float(min(2.0 * 2 ** max(deliveries - 1, 0), cap_s))


class Dispatcher:
    """Turns requests into jobs and follows them (see the module docstring)."""

    def __init__(self, config: DispatcherConfig, client: CouncilJobClient) -> None:
        self.config = config
        self.stats = DispatchStats()
        self._client = client
        self._active: dict[str, DispatchRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._slot_freed = asyncio.Event()
        self._resume_at = 0.0
        self._ledger: Ledger | None = None
        self._dead: JetStreamPublisher | None = None

    @property
    def in_flight(self) -> int:
        return len(self._active)

    async def run(self, stop: asyncio.Event) -> DispatchStats:
        """Serve until ``stop`` is set (see the module docstring); return what was done.

        Raises:
            NatsUnreachable: NATS did not answer at start, or stayed away for longer than
                ``outage_budget_s``.
            StreamConfigMismatch: a stream exists with a config the dispatcher cannot use.
        """
        cfg = self.config
        nc = await connect_nats(cfg.nats_url, timeout_s=cfg.connect_timeout_s, name="swe-fleet-dispatch")
        try:
            js = nc.jetstream(timeout=cfg.connect_timeout_s)
            bound = cfg.connect_timeout_s * 2
            try:
                await asyncio.wait_for(
                    ensure_stream(js, cfg.requests_stream, COUNCIL_REQUESTS_SUBJECTS), bound
                )
                await asyncio.wait_for(ensure_stream(js, cfg.events_stream, AGENT_RESPONSES_SUBJECTS), bound)
                policy = PublishPolicy()
                events = JetStreamPublisher(nc, cfg.events_stream, policy, url=cfg.nats_url)
                self._dead = JetStreamPublisher(nc, cfg.requests_stream, policy, url=cfg.nats_url)
                self._ledger = await Ledger.open(js, events, cfg.events_stream, timeout_s=bound)
                await self._load_ledger()
                sub = await self._subscribe(js)
            except TimeoutError:
                raise NatsUnreachable(
                    f"NATS at {cfg.nats_url} answered but JetStream did not within {bound:.0f} s; "
                    "start nats-server with -js",
                    url=cfg.nats_url,
                ) from None
            log.info(
                "dispatch.started",
                durable=cfg.durable,
                in_flight=self.in_flight,
                max_in_flight=cfg.max_in_flight,
                forgotten=self.stats.forgotten,
            )
            follower = asyncio.create_task(self._follow(stop), name="dispatch-follow")
            try:
                await self._pull(nc, sub, stop)
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await follower
                # A pull subscription's late "no messages" status would keep a drain waiting.
                with contextlib.suppress(*TRANSIENT_ERRORS, nats.errors.Error):
                    await sub.unsubscribe()
        finally:
            await close_nats(nc)
        log.info("dispatch.stopped", dispatched=self.stats.dispatched, dead=self.stats.dead_lettered)
        return self.stats

    async def _subscribe(self, js: Any) -> Any:
        """Bind to the durable request consumer, creating it when missing (bounded)."""
        cfg = self.config
        return await asyncio.wait_for(
            js.pull_subscribe(
                COUNCIL_REQUEST, durable=cfg.durable, stream=cfg.requests_stream, config=cfg.consumer_config()
            ),
            cfg.connect_timeout_s * 2,
        )

    # ---- start-up --------------------------------------------------------------------------

    async def _load_ledger(self) -> None:
        ledger = self._require_ledger()
        records = await ledger.load_all()
        self.stats.forgotten = await ledger.forget_finished(records)
        for record in records:
            if record.pending is not None:
                record = await ledger.resolve_pending(record)
            if not record.terminal:
                self._active[record.request_id] = record
        self.stats.in_flight_at_start = self.in_flight

    def _require_ledger(self) -> Ledger:
        if self._ledger is None:  # pragma: no cover - run() sets it first
            raise DispatchError("the dispatcher is not started")
        return self._ledger

    # ---- pulling requests ------------------------------------------------------------------

    async def _pull(self, nc: Any, sub: Any, stop: asyncio.Event) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        away_since: float | None = None
        while not stop.is_set():
            self._slot_freed.clear()
            if self.in_flight >= cfg.max_in_flight:
                # Backpressure: nothing is fetched, so waiting requests are not even delivered.
                await _sleep_unless(stop, cfg.fetch_wait_s, also=self._slot_freed)
                continue
            if (delay := self._resume_at - loop.time()) > 0:
                await _sleep_unless(stop, min(delay, cfg.fetch_wait_s))
                continue
            try:
                msgs = await sub.fetch(1, timeout=cfg.fetch_wait_s)
            except _FETCH_ERRORS as exc:
                if isinstance(exc, TimeoutError) and nc.is_connected:
                    away_since = None
                    continue  # no request waiting
                # NATS away, or the consumer refused (deleted?): bounded by the outage budget. The
                # consumer is not created again behind the operator's back: a new one would
                # deliver the stream's whole history.
                away_since = away_since or time.monotonic()
                if nc.is_closed or time.monotonic() - away_since > cfg.outage_budget_s:
                    raise NatsUnreachable(
                        f"fetching requests from NATS at {cfg.nats_url} failed for "
                        f"{time.monotonic() - away_since:.0f} s ({type(exc).__name__}: {exc}); restart the "
                        f"dispatcher when NATS is back: the durable {cfg.durable!r} and the ledger resume "
                        "where it stopped",
                        url=cfg.nats_url,
                    ) from exc
                log.warning("dispatch.nats_away", error=f"{type(exc).__name__}: {exc}")
                await _sleep_unless(stop, 1.0)
                continue
            away_since = None
            for msg in msgs:
                if stop.is_set():
                    # Pulled after the stop: hand it back at once for the next dispatcher.
                    with contextlib.suppress(*TRANSIENT_ERRORS):
                        await msg.nak()
                    continue
                await self._handle(msg)

    async def _handle(self, msg: Any) -> None:
        """Dead-letter, dispatch, or hand back (with a delay) one request; never raises."""
        meta = msg.metadata
        deliveries = int(meta.num_delivered or 1)
        try:
            request = decode_request(msg.data)
            spec = resolve_spec(request, self.config.spec_dir)
        except InvalidRequest as exc:
            await self._dead_letter(msg, exc.reason, exc.request_id)
            return
        rid = request.request_id
        bound = log.bind(request_id=rid, seq=meta.sequence.stream, delivery=deliveries)
        lock = self._lock(rid)
        async with lock:
            try:
                if deliveries > self.config.max_attempts:
                    await self._give_up(msg, rid, deliveries)
                else:
                    await self._dispatch(msg, rid, spec, bound)
            except _RETRYABLE as exc:
                await self._retry_later(msg, rid, deliveries, exc, bound)
            except Exception as exc:
                # A bug must not stop the service: the request comes back later, and after
                # max_attempts deliveries it is dead-lettered with its payload.
                bound.exception("dispatch.unexpected_error")
                await self._retry_later(msg, rid, deliveries, exc, bound)
        self._drop_lock(rid)

    async def _dispatch(self, msg: Any, rid: str, spec: CouncilSpec, bound: Any) -> None:
        cfg = self.config
        ledger = self._require_ledger()
        # The heartbeat covers everything up to the ack: ledger writes and the publish can
        # take longer than ack_wait too, and a redelivery meanwhile would count as an attempt.
        async with _heartbeat(msg, cfg.ack_wait_s):
            record, reserved_now = await ledger.reserve(rid, submission_id_for(rid), spec.name)
            self._remember(record)
            # A record with a job: an earlier delivery submitted it and lost its ack. Submitting
            # again finds that job (or refuses a different request under the same id), but once
            # Ray has deleted the finished job it would start a second run: then only ack.
            job_gone = (
                record.job_id is not None
                and await asyncio.to_thread(self._client.find_job, record.job_id) is None
            )
            if not job_gone:
                request = CouncilRequest(
                    spec=spec,
                    env_kind=cfg.env_kind,
                    nats_url=cfg.job_nats_url or cfg.nats_url,
                    submission_id=record.submission_id,
                )
                try:
                    submitted = await asyncio.to_thread(self._client.submit, request)
                    bound.info(
                        "dispatch.submitted" if submitted.created else "dispatch.found_existing",
                        job_id=submitted.job_id,
                    )
                except SubmissionConflict as exc:
                    if reserved_now:
                        await self._release(record)
                    await self._dead_letter(msg, str(exc), rid)
                    return
                record = await ledger.mark_submitted(record, submitted.job_id, submitted.dashboard_url)
                self._remember(record)
            else:
                bound.info("dispatch.job_gone_not_resubmitted", job_id=record.job_id)
            record = await ledger.publish_once(record, record.status_event("submitted"))
            self._remember(record)
            await msg.ack_sync(timeout=cfg.connect_timeout_s)
        self.stats.dispatched += 1
        bound.info("dispatch.acked", job_id=record.job_id, in_flight=self.in_flight)

    async def _retry_later(self, msg: Any, rid: str, deliveries: int, exc: BaseException, bound: Any) -> None:
        delay = retry_delay_s(deliveries)
        if isinstance(exc, DashboardUnreachable):
            # The cluster is away, not this request: do not pull more requests meanwhile.
            self._resume_at = asyncio.get_running_loop().time() + delay
        bound.warning("dispatch.retry_later", error=f"{type(exc).__name__}: {exc}", delay_s=delay)
        self.stats.retried += 1
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await msg.nak(delay=delay)

    async def _give_up(self, msg: Any, rid: str, deliveries: int) -> None:
        ledger = self._require_ledger()
        record = await ledger.get(rid)
        if record is not None and record.job_id is None:
            job = await asyncio.to_thread(self._client.find_job, record.submission_id)
            if job is None:
                await self._release(record)
            else:
                record = await ledger.mark_submitted(record, record.submission_id, self._client.url)
                self._remember(record)
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
        payload = msg.data.decode("utf-8", errors="replace")
        if len(payload) > MAX_DEAD_PAYLOAD_CHARS:
            cut = len(payload) - MAX_DEAD_PAYLOAD_CHARS
            payload = f"{payload[:MAX_DEAD_PAYLOAD_CHARS]}...[{cut} more characters cut]"
        dead = CouncilRequestDead(
            reason=reason,
            payload=payload,
            request_id=request_id,
            stream_seq=meta.sequence.stream,
            deliveries=meta.num_delivered,
        )
        assert self._dead is not None
        try:
            await self._dead.publish(dead)
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

    # ---- following jobs --------------------------------------------------------------------

    async def _follow(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            for rid in list(self._active):
                if stop.is_set():
                    break
                lock = self._lock(rid)
                if lock.locked():
                    continue  # its request is being handled right now
                async with lock:
                    record = self._active.get(rid)
                    if record is not None:
                        try:
                            await self._follow_one(record)
                        except _RETRYABLE as exc:
                            log.warning(
                                "dispatch.follow_failed", request_id=rid, error=f"{type(exc).__name__}: {exc}"
                            )
                        except Exception:
                            # A bug must not end the following of every job: the next tick retries.
                            log.exception("dispatch.follow_unexpected_error", request_id=rid)
                self._drop_lock(rid)
            await _sleep_unless(stop, max(self.config.poll_s - (loop.time() - started), 0.0))

    async def _follow_one(self, record: DispatchRecord) -> None:
        ledger = self._require_ledger()
        if record.job_id is None:
            # A reservation a crashed run left between submitting and recording the job.
            job = await asyncio.to_thread(self._client.find_job, record.submission_id)
            if job is None:
                if time.time() - record.reserved_at > self.config.reservation_timeout_s:
                    log.warning("dispatch.reservation_expired", request_id=record.request_id)
                    await self._release(record)
                return
            record = await ledger.mark_submitted(record, record.submission_id, self._client.url)
            self._remember(record)
        # "submitted" comes before any later state, also when publishing it failed in _dispatch
        # (the request then waits for redelivery); once published, this is a no-op.
        record = await ledger.publish_once(record, record.status_event("submitted"))
        self._remember(record)
        assert record.job_id is not None
        job = await asyncio.to_thread(self._client.find_job, record.job_id)
        if job is None:
            record = await ledger.publish_once(
                record, record.status_event("failed", "the job no longer exists on the cluster (deleted)")
            )
        else:
            if job.status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
                # A job that succeeded ran, even if it did so between two polls.
                record = await ledger.publish_once(record, record.status_event("running"))
                self._remember(record)
            terminal = _TERMINAL_STATES.get(job.status)
            if terminal is not None:
                record = await ledger.publish_once(record, record.status_event(terminal, job.message))
        self._remember(record)

    # ---- bookkeeping -----------------------------------------------------------------------

    def _remember(self, record: DispatchRecord) -> None:
        if record.terminal:
            if self._active.pop(record.request_id, None) is not None:
                self._slot_freed.set()
        else:
            self._active[record.request_id] = record

    async def _release(self, record: DispatchRecord) -> None:
        await self._require_ledger().release(record)
        if self._active.pop(record.request_id, None) is not None:
            self._slot_freed.set()

    def _lock(self, rid: str) -> asyncio.Lock:
        return self._locks.setdefault(rid, asyncio.Lock())

    def _drop_lock(self, rid: str) -> None:
        lock = self._locks.get(rid)
        if lock is not None and not lock.locked() and rid not in self._active:
            del self._locks[rid]


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
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _sleep_unless(stop: asyncio.Event, seconds: float, *, also: asyncio.Event | None = None) -> None:
    """Sleep up to ``seconds``; wake early when ``stop`` (or ``also``) is set."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if also is not None:
        waiters.append(asyncio.ensure_future(also.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def run_dispatcher(config: DispatcherConfig) -> signal.Signals | None:
    """Run the dispatcher in this process until SIGTERM or SIGINT; return the signal.

    Raises:
        DashboardUnreachable / AddressError / SubmissionError: the Jobs API is not usable.
        NatsUnreachable / StreamConfigMismatch: see :meth:`Dispatcher.run`.
    """
    client = CouncilJobClient(
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
            await Dispatcher(config, client).run(stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return received[0] if received else None

    return asyncio.run(main())
