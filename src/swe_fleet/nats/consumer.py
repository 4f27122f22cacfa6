"""Typed council events from a JetStream pull consumer.

:func:`iter_events` yields each event and acks it when the caller asks for the next one (so an
event the caller did not finish with is redelivered). A payload that is not a valid event goes
to ``council.dead`` with the payload and the reason, and is terminated: it never blocks the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import structlog
from nats.js import api

from swe_fleet.errors import NatsUnreachable, UndecodableEvent
from swe_fleet.events import (
    AGENT_RESPONSE_COMPLETED,
    AGENT_RESPONSE_FAILED,
    AGENT_RESPONSES_STREAM,
    COUNCIL_DEAD,
    COUNCIL_JOB_FAILED,
    COUNCIL_JOB_STATUS_SUBJECTS,
    DELIBERATION_COMPLETED,
    AnyEvent,
    decode_event,
)
from swe_fleet.nats.publisher import TRANSIENT_ERRORS, connect_nats, ensure_stream

log = structlog.get_logger(__name__)

COUNCIL_SUBJECTS = (
    AGENT_RESPONSE_COMPLETED,
    AGENT_RESPONSE_FAILED,
    DELIBERATION_COMPLETED,
    COUNCIL_JOB_FAILED,
    # The dispatcher's job status events (council.job.failed is already above).
    *(s for s in COUNCIL_JOB_STATUS_SUBJECTS if s != COUNCIL_JOB_FAILED),
)

Event = AnyEvent


@dataclass(frozen=True)
class ConsumerOptions:
    """Where and how to consume.

    Attributes:
        durable: durable consumer name (survives restarts, resumes where it acked); None for
            an ephemeral consumer removed after ``inactive_threshold_s`` of disuse.
        subjects: subjects to receive (default: every council event subject).
        idle_timeout_s: stop after this long without a message while NATS is reachable (an
            outage does not count as idle); None: never stop.
        ack_wait_s: redelivery after this long without an ack (the first delivery's wait).
        max_deliver: give up on a message after this many deliveries.
        backoff_s: the ack wait of each delivery in turn (the last one repeats); JetStream uses
            it instead of ``ack_wait_s``. Default :func:`redelivery_backoff`.
        outage_budget_s: how long NATS may stay unreachable mid-stream before
            :class:`~swe_fleet.errors.NatsUnreachable` (fetches are retried meanwhile).
        submission_id: only yield events of this submission (others are acked and skipped).
        max_events: stop after this many yielded events (the last one is acked before stopping).
    """

    nats_url: str
    stream: str = AGENT_RESPONSES_STREAM
    durable: str | None = "swe-fleet-consume"
    max_events: int | None = None
    subjects: Sequence[str] = COUNCIL_SUBJECTS
    idle_timeout_s: float | None = None
    fetch_batch: int = 64
    fetch_wait_s: float = 1.0
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    backoff_s: Sequence[float] | None = None
    inactive_threshold_s: float = 300.0
    connect_timeout_s: float = 5.0
    outage_budget_s: float = 120.0
    submission_id: str | None = None

    def __post_init__(self) -> None:
        backoff = self.redelivery_waits()
        if not backoff or any(w <= 0 for w in backoff) or len(backoff) > self.max_deliver:
            raise ValueError(
                f"backoff_s {backoff} must be positive waits, at most max_deliver={self.max_deliver} of them"
            )

    def redelivery_waits(self) -> list[float]:
        """The ``backoff`` list sent to JetStream."""
        if self.backoff_s is not None:
            return [float(w) for w in self.backoff_s]
        return redelivery_backoff(self.ack_wait_s, self.max_deliver)

    def consumer_config(self) -> api.ConsumerConfig:
        """The JetStream consumer config: explicit acks, backoff redelivery, bounded deliveries."""
        backoff = self.redelivery_waits()
        return api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=backoff[0],  # JetStream sets it to backoff[0] anyway; say so
            backoff=backoff,
            max_deliver=self.max_deliver,
            deliver_policy=api.DeliverPolicy.ALL,
            filter_subjects=list(self.subjects),
            inactive_threshold=None if self.durable else self.inactive_threshold_s,
        )


def redelivery_backoff(ack_wait_s: float, max_deliver: int, cap_s: float = 600.0) -> list[float]:
    """One ack wait per delivery, doubling from ``ack_wait_s`` up to ``cap_s``.

    A consumer that crashed gets its message back after ``ack_wait_s``; one that keeps failing
    on it is asked less and less often, until ``max_deliver`` ends it.
    """
    return [min(ack_wait_s * 2**i, max(cap_s, ack_wait_s)) for i in range(max(max_deliver, 1))]


class _Subscription:
    """A connection and a pull subscription on the consumer, opened again if NATS closed it."""

    def __init__(self, opts: ConsumerOptions) -> None:
        self.opts = opts
        self.nc: Any = None
        self.js: Any = None
        self.sub: Any = None

    async def open(self) -> None:
        """Connect, ensure the stream, bind (or create) the consumer; each step bounded.

        Raises:
            NatsUnreachable: NATS did not answer within the connect bound.
        """
        o = self.opts
        nc = await connect_nats(o.nats_url, timeout_s=o.connect_timeout_s, name="swe-fleet-consume")
        try:
            js = nc.jetstream(timeout=o.connect_timeout_s)
            # A consumer may start before the first publisher: both sides ensure the same stream.
            await asyncio.wait_for(ensure_stream(js, o.stream), o.connect_timeout_s * 2)
            self.sub = await asyncio.wait_for(
                js.pull_subscribe("", durable=o.durable, stream=o.stream, config=o.consumer_config()),
                o.connect_timeout_s * 2,
            )
        except BaseException:
            await _close(nc)
            raise
        self.nc, self.js = nc, js

    async def reopen(self) -> None:
        """A new connection after the client gave up reconnecting (the durable resumes)."""
        await _close(self.nc)
        await self.open()
        log.info("consume.reconnected", url=self.opts.nats_url, durable=self.opts.durable)

    @property
    def connected(self) -> bool:
        return bool(self.nc is not None and self.nc.is_connected)

    @property
    def closed(self) -> bool:
        return bool(self.nc is None or self.nc.is_closed)

    async def close(self) -> None:
        await _close(self.nc)


async def iter_events(opts: ConsumerOptions) -> AsyncIterator[Event]:
    """Yield typed events from the stream until ``idle_timeout_s`` passes without one.

    Each fetch waits at most ``fetch_wait_s``; connecting waits at most ``connect_timeout_s``.
    Across a NATS restart the iterator keeps going: failed fetches are retried with bounded,
    growing waits (and a new connection if the client gave up), for at most ``outage_budget_s``.
    An event is acked when the caller asks for the next one; one not acked (the caller stopped,
    the connection broke) is delivered again.

    Raises:
        NatsUnreachable: NATS did not answer within the connect bound, or stayed away mid-stream
            for longer than ``outage_budget_s``.
    """
    conn = _Subscription(opts)
    await conn.open()
    try:
        last_message = time.monotonic()
        delivered = 0
        outage = _Outage(opts)
        while True:
            try:
                msgs = await conn.sub.fetch(opts.fetch_batch, timeout=opts.fetch_wait_s)
            except TRANSIENT_ERRORS as exc:
                if not (isinstance(exc, TimeoutError) and conn.connected):
                    # NATS is away (or the consumer is not served yet): not idleness.
                    await outage.wait(exc)
                    last_message = time.monotonic()
                    # Closed: the client gave up reconnecting. Connected but refused again and
                    # again: the consumer is gone (deleted, or an ephemeral one expired); binding
                    # anew creates it.
                    if conn.closed or (conn.connected and outage.waits >= 3):
                        with contextlib.suppress(*TRANSIENT_ERRORS):
                            await conn.reopen()
                    continue
                msgs = []  # a quiet stream
            outage.end()
            if not msgs:  # a timeout, or the server ended the pull early (a stale 404/408)
                if opts.idle_timeout_s is not None and time.monotonic() - last_message > opts.idle_timeout_s:
                    return
                continue
            last_message = time.monotonic()
            for msg in msgs:
                try:
                    event = decode_event(msg.data)
                except UndecodableEvent as exc:
                    try:
                        await _dead_letter(conn.js, msg, exc.reason)
                    except TRANSIENT_ERRORS as dl_exc:
                        # Not terminated: it comes back (and is dead-lettered) after the outage.
                        log.warning("consume.dead_letter_failed", error=f"{type(dl_exc).__name__}: {dl_exc}")
                        break
                    continue
                yielded = opts.submission_id is None or event.submission_id == opts.submission_id
                if yielded:
                    yield event
                    delivered += 1
                try:
                    await msg.ack()
                except TRANSIENT_ERRORS as exc:
                    # The rest of this batch would go unacked as well: JetStream redelivers it.
                    log.warning("consume.ack_failed", key=event.key, error=f"{type(exc).__name__}: {exc}")
                    break
                if opts.max_events is not None and delivered >= opts.max_events:
                    return
    finally:
        await conn.close()


class _Outage:
    """Bounded waits while NATS is unreachable; raises once the outage exceeds its budget."""

    def __init__(self, opts: ConsumerOptions) -> None:
        self.opts = opts
        self.since: float | None = None
        self.waits = 0

    async def wait(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            log.warning("consume.nats_away", url=self.opts.nats_url, error=f"{type(exc).__name__}: {exc}")
        if now - self.since > self.opts.outage_budget_s:
            raise NatsUnreachable(
                f"NATS at {self.opts.nats_url} was unreachable for more than "
                f"{self.opts.outage_budget_s:.0f} s while consuming ({type(exc).__name__}: {exc}); "
                f"the durable consumer {self.opts.durable!r} resumes where it acked when restarted",
                url=self.opts.nats_url,
            ) from exc
        await asyncio.sleep(min(0.1 * 2**self.waits, 2.0))
        self.waits += 1

    def end(self) -> None:
        if self.since is not None:
            log.info(
                "consume.nats_back", url=self.opts.nats_url, after_s=round(time.monotonic() - self.since, 1)
            )
        self.since, self.waits = None, 0


async def _close(nc: Any) -> None:
    if nc is None or nc.is_closed:
        return
    # Not drained: acks are already sent, and what is left unacked is redelivered anyway.
    with contextlib.suppress(TimeoutError, OSError, nats.errors.Error):  # see publish.close_nats
        await asyncio.wait_for(nc.close(), 5)


async def _dead_letter(js: Any, msg: Any, reason: str) -> None:
    """Publish the bad payload and the reason to ``council.dead``, then terminate the message."""
    body = {
        "reason": reason,
        "subject": msg.subject,
        "payload": msg.data.decode("utf-8", errors="replace"),
        "stream_seq": msg.metadata.sequence.stream if msg.metadata else None,
    }
    log.warning("consume.dead_letter", subject=msg.subject, reason=reason)
    # Keyed by stream sequence: a redelivered bad message is dead-lettered once.
    headers = {"Nats-Msg-Id": f"dead/{body['stream_seq']}"} if body["stream_seq"] else None
    await js.publish(COUNCIL_DEAD, json.dumps(body).encode(), headers=headers)
    await msg.term()
