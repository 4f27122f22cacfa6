"""Reading a stream back: every stored message of some subjects, from the start to what is there
now, with a consumer of its own that acknowledges nothing and goes away by itself.

Used where a reader needs what was already published: a council's transcript for ``swe-fleet
report``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from nats.js import api

from swe_fleet.errors import UndecodableEvent
from swe_fleet.events import AGENT_RESPONSES_SUBJECTS, AnyEvent, decode_event
from swe_fleet.nats.pull import FETCH_ERRORS

#: The consumer of one read goes away this long after the reader stops fetching.
INACTIVE_S = 30.0


async def read_stream(
    js: Any,
    stream: str,
    subjects: Sequence[str],
    *,
    batch: int = 256,
    fetch_timeout_s: float = 1.0,
) -> list[bytes]:
    """The payload of every message of ``subjects`` stored in ``stream``, in stream order, up to
    what was pending when the read began.

    Each fetch is bounded by ``fetch_timeout_s``; the read ends at the first fetch that finds
    nothing more. Bound the whole read with ``asyncio.wait_for`` where it matters.
    """
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.ALL,
        filter_subjects=list(subjects),
        inactive_threshold=INACTIVE_S,
    )
    sub = await js.pull_subscribe("", stream=stream, config=config)
    found: list[bytes] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=fetch_timeout_s)
            except TimeoutError:
                return found
            found += [m.data for m in msgs]
            if not msgs or msgs[-1].metadata.num_pending == 0:
                return found
    finally:
        with contextlib.suppress(*FETCH_ERRORS):
            await sub.unsubscribe()


async def submission_events(
    js: Any, stream: str, submission_id: str, *, timeout_s: float = 60.0
) -> list[AnyEvent]:
    """Every council event of ``submission_id`` stored in ``stream``, in stream order (messages
    that do not decode, or belong to other submissions, are skipped).

    Raises:
        TimeoutError: the stream was not read within ``timeout_s``.
    """
    payloads = await asyncio.wait_for(read_stream(js, stream, AGENT_RESPONSES_SUBJECTS), timeout_s)
    events: list[AnyEvent] = []
    for data in payloads:
        try:
            event = decode_event(data)
        except UndecodableEvent:
            continue
        if event.submission_id == submission_id:
            events.append(event)
    return events
