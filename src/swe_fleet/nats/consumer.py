"""Typed council events from a durable JetStream pull consumer, on the one pull loop
(:mod:`~swe_fleet.nats.pull`).

:func:`iter_events` yields each event and acks it when the caller asks for the next one (so an
event the caller did not finish with is redelivered). A payload that is not a valid event goes
to ``council.dead`` with the payload and the reason, and is terminated: it never blocks the stream.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from nats.js import api

from swe_fleet.errors import ConfigError, NatsPermissionDenied, UndecodableEvent
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
from swe_fleet.nats.connection import JetStreamConnection, denial_mark, open_jetstream, permission_denial
from swe_fleet.nats.policy import TRANSIENT_ERRORS
from swe_fleet.nats.pull import OutagePolicy, PullLoop
from swe_fleet.nats.streams import StreamRequirement

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
            raise ConfigError(
                f"backoff_s {backoff} must be positive waits, at most max_deliver={self.max_deliver} of them",
                setting="backoff_s",
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

    def outage_policy(self) -> OutagePolicy:
        """How the consumer rides out NATS being away: growing waits up to 2 s for at most
        ``outage_budget_s``; a connection closed for good is opened again, and a consumer that
        keeps refusing (deleted, or expired) is bound anew, which creates it."""
        return OutagePolicy(
            budget_s=self.outage_budget_s,
            initial_wait_s=0.1,
            max_wait_s=2.0,
            reopen_when_closed=True,
            reopen_after=3,
        )


def redelivery_backoff(ack_wait_s: float, max_deliver: int, cap_s: float = 600.0) -> list[float]:
    """One ack wait per delivery, doubling from ``ack_wait_s`` up to ``cap_s``.

    A consumer that crashed gets its message back after ``ack_wait_s``; one that keeps failing
    on it is asked less and less often, until ``max_deliver`` ends it.
    """
    return [min(ack_wait_s * 2**i, max(cap_s, ack_wait_s)) for i in range(max(max_deliver, 1))]


class _Subscription:
    """A connection and a pull subscription on the consumer, opened again if NATS closed it
    (a :class:`~swe_fleet.nats.pull.PullSource`)."""

    def __init__(self, opts: ConsumerOptions) -> None:
        self.opts = opts
        self.conn: JetStreamConnection | None = None
        self.sub: Any = None

    async def open(self) -> None:
        """Connect, ensure the stream, bind (or create) the consumer; each step bounded.

        Raises:
            NatsUnreachable: NATS (or JetStream) did not answer within the connect bound.
        """
        o = self.opts
        # A consumer may start before the first publisher: both sides ensure the same stream.
        conn = await open_jetstream(
            o.nats_url,
            name="swe-fleet-consume",
            connect_timeout_s=o.connect_timeout_s,
            streams=[StreamRequirement(o.stream)],
        )
        async with conn.setting_up():
            self.sub = await conn.bounded(
                conn.js.pull_subscribe("", durable=o.durable, stream=o.stream, config=o.consumer_config())
            )
        self.conn = conn

    async def reopen(self) -> None:
        """A new connection after the client gave up reconnecting (the durable resumes)."""
        await self.close()
        await self.open()
        log.info("consume.reconnected", url=self.opts.nats_url, durable=self.opts.durable)

    @property
    def js(self) -> Any:
        assert self.conn is not None  # open() ran
        return self.conn.js

    @property
    def connected(self) -> bool:
        return bool(self.conn is not None and self.conn.nc.is_connected)

    @property
    def closed(self) -> bool:
        return bool(self.conn is None or self.conn.nc.is_closed)

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - nats-py's API
        return list(await self.sub.fetch(batch, timeout=timeout))

    def denial_mark(self) -> int:
        return 0 if self.conn is None else denial_mark(self.conn.nc)

    def denied(self, url: str, since: int) -> NatsPermissionDenied | None:
        return None if self.conn is None else permission_denial(self.conn.nc, url, since=since)

    async def close(self) -> None:
        if self.conn is not None:
            # Not drained: acks are already sent, and what is left unacked is redelivered anyway.
            await self.conn.close(drain=False, timeout_s=5)


async def iter_events(opts: ConsumerOptions) -> AsyncGenerator[Event, None]:
    """Yield typed events from the stream until ``idle_timeout_s`` passes without one.

    Each fetch waits at most ``fetch_wait_s``; connecting waits at most ``connect_timeout_s``.
    Across a NATS restart the iterator keeps going (:meth:`ConsumerOptions.outage_policy`):
    failed fetches are retried with bounded, growing waits (and a new connection if the client
    gave up), for at most ``outage_budget_s``. An event is acked when the caller asks for the
    next one; one not acked (the caller stopped, the connection broke) is delivered again.

    Raises:
        NatsUnreachable: NATS did not answer within the connect bound, or stayed away mid-stream
            for longer than ``outage_budget_s``.
    """
    conn = _Subscription(opts)
    await conn.open()
    pull = PullLoop(
        conn,
        batch=opts.fetch_batch,
        fetch_wait_s=opts.fetch_wait_s,
        policy=opts.outage_policy(),
        url=opts.nats_url,
        doing="consuming",
        hint=f"the durable consumer {opts.durable!r} resumes where it acked when restarted",
        log_as="consume",
    )
    delivered = 0
    try:
        async with contextlib.aclosing(pull.batches()) as batches:
            async for msgs in batches:
                if not msgs:  # quiet, an outage, or the server ended the pull early (a stale 404/408)
                    limit = opts.idle_timeout_s  # an outage is not idleness
                    if limit is not None and not pull.away and pull.idle_s > limit:
                        return
                    continue
                for msg in msgs:
                    try:
                        event = decode_event(msg.data)
                    except UndecodableEvent as exc:
                        try:
                            await _dead_letter(conn.js, msg, exc.reason)
                        except TRANSIENT_ERRORS as dl_exc:
                            # Not terminated: it comes back (and is dead-lettered) after the outage.
                            log.warning(
                                "consume.dead_letter_failed", error=f"{type(dl_exc).__name__}: {dl_exc}"
                            )
                            break
                        continue
                    if opts.submission_id is None or event.submission_id == opts.submission_id:
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
