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

from swe_fleet.events import (
    AGENT_RESPONSE_COMPLETED,
    AGENT_RESPONSE_FAILED,
    AGENT_RESPONSES_STREAM,
    COUNCIL_DEAD,
    DELIBERATION_COMPLETED,
    AnyEvent,
    UndecodableEvent,
    decode_event,
)
from swe_fleet.publish import connect_nats, ensure_stream

log = structlog.get_logger(__name__)

COUNCIL_SUBJECTS = (AGENT_RESPONSE_COMPLETED, AGENT_RESPONSE_FAILED, DELIBERATION_COMPLETED)

Event = AnyEvent


@dataclass(frozen=True)
class ConsumerOptions:
    """Where and how to consume.

    Attributes:
        durable: durable consumer name (survives restarts, resumes where it acked); None for
            an ephemeral consumer removed after ``inactive_threshold_s`` of disuse.
        subjects: subjects to receive (default: every council event subject).
        idle_timeout_s: stop after this long without a message; None: never stop.
        ack_wait_s: redelivery after this long without an ack.
        max_deliver: give up on a message after this many deliveries.
        submission_id: only yield events of this submission (others are acked and skipped).
    """

    nats_url: str
    stream: str = AGENT_RESPONSES_STREAM
    durable: str | None = "swe-fleet-consume"
    subjects: Sequence[str] = COUNCIL_SUBJECTS
    idle_timeout_s: float | None = None
    fetch_batch: int = 64
    fetch_wait_s: float = 1.0
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    inactive_threshold_s: float = 300.0
    connect_timeout_s: float = 5.0
    submission_id: str | None = None


async def iter_events(opts: ConsumerOptions) -> AsyncIterator[Event]:
    """Yield typed events from the stream until ``idle_timeout_s`` passes without one.

    Each fetch waits at most ``fetch_wait_s``; connecting waits at most ``connect_timeout_s``.

    Raises:
        NatsUnreachable: NATS did not answer within the connect bound.
    """
    nc = await connect_nats(opts.nats_url, timeout_s=opts.connect_timeout_s, name="swe-fleet-consume")
    try:
        js = nc.jetstream(timeout=opts.connect_timeout_s)
        # A consumer may start before the first publisher: both sides ensure the same stream.
        await asyncio.wait_for(ensure_stream(js, opts.stream), opts.connect_timeout_s * 2)
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=opts.ack_wait_s,
            max_deliver=opts.max_deliver,
            deliver_policy=api.DeliverPolicy.ALL,
            filter_subjects=list(opts.subjects),
            inactive_threshold=None if opts.durable else opts.inactive_threshold_s,
        )
        sub = await asyncio.wait_for(
            js.pull_subscribe("", durable=opts.durable, stream=opts.stream, config=config),
            opts.connect_timeout_s * 2,
        )
        last_message = time.monotonic()
        while True:
            try:
                msgs = await sub.fetch(opts.fetch_batch, timeout=opts.fetch_wait_s)
            except (nats.errors.TimeoutError, TimeoutError):
                if opts.idle_timeout_s is not None and time.monotonic() - last_message > opts.idle_timeout_s:
                    return
                continue
            last_message = time.monotonic()
            for msg in msgs:
                try:
                    event = decode_event(msg.data)
                except UndecodableEvent as exc:
                    await _dead_letter(js, msg, exc.reason)
                    continue
                if opts.submission_id is None or event.submission_id == opts.submission_id:
                    yield event
                await msg.ack()
    finally:
        with contextlib.suppress(TimeoutError):  # close is local; bounded anyway
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
