"""The JetStream publisher: each event with its key as ``Nats-Msg-Id``, transient errors retried
within :class:`~swe_fleet.nats.policy.PublishPolicy`'s bounds, every PubAck checked, and whatever
was not acknowledged spooled to the outbox (:mod:`~swe_fleet.nats.outbox`) so nothing is lost.

Exactly once by key holds while retries stay inside the stream's duplicate window
(:mod:`~swe_fleet.nats.streams`). A connection that NATS closed for good is opened again by the
next publish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import nats.errors
import structlog
from nats.js import api
from tenacity import RetryError

from swe_fleet.errors import NatsRefused, OutboxError, OutboxWritten, PublishError
from swe_fleet.nats.connection import close_nats, connect_nats, open_jetstream, permission_denial
from swe_fleet.nats.outbox import append_to_outbox, default_outbox_path, entries_of
from swe_fleet.nats.policy import TRANSIENT_ERRORS, PublishPolicy
from swe_fleet.nats.streams import StreamRequirement, StreamRetention
from swe_fleet.spec import PublishSpec

log = structlog.get_logger(__name__)


class _Publishable(Protocol):
    """Anything with ``subject``, ``key`` and ``to_bytes()`` (every council event, outbox entries)."""

    @property
    def subject(self) -> str: ...

    @property
    def key(self) -> str: ...

    def to_bytes(self) -> bytes: ...


@dataclass(frozen=True)
class PublishResult:
    """The checked PubAck of one event."""

    key: str
    stream: str
    seq: int
    duplicate: bool


@dataclass(frozen=True)
class PublishOutcome:
    """What :meth:`JetStreamPublisher.try_publish_all` did.

    Attributes:
        results: one per event, in input order; None where the event was not acknowledged.
        failure: the first publish that failed after its retries, or None.
    """

    results: list[PublishResult | None]
    failure: PublishError | None = None
    acknowledged: list[PublishResult] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "acknowledged", [r for r in self.results if r is not None])


class JetStreamPublisher:
    """Publishes council events to JetStream, exactly once per event key.

    A connection that NATS closed for good (reconnect attempts exhausted) is opened again by the
    next publish, so a long outage costs the events of that outage (spooled), not the publisher.
    """

    def __init__(
        self,
        nc: Any,
        stream: str,
        policy: PublishPolicy,
        *,
        url: str | None = None,
        connect_timeout_s: float = 5.0,
        outbox: Path | None = None,
    ) -> None:
        """Wrap a connection. ``url`` enables reconnecting after the client gave up; ``outbox``
        is the spool file (default: :func:`~swe_fleet.nats.outbox.default_outbox_path` of the
        events' ``submission_id``)."""
        self._nc = nc
        self._js = nc.jetstream(timeout=policy.ack_timeout_s)
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_lock = asyncio.Lock()
        self._closed = False
        self.stream = stream
        self.policy = policy
        self.outbox = outbox
        self.published = 0
        self.duplicates = 0

    @classmethod
    async def connect(
        cls,
        spec: PublishSpec,
        *,
        duplicate_window_s: float | None = None,
        outbox: Path | None = None,
    ) -> JetStreamPublisher:
        """Connect to ``spec.nats_url`` and ensure the stream exists (see :meth:`open`)."""
        return await cls.open(
            spec.nats_url,
            stream=spec.stream,
            policy=PublishPolicy.from_spec(spec),
            connect_timeout_s=spec.connect_timeout_s,
            duplicate_window_s=duplicate_window_s,
            outbox=outbox,
            retention=StreamRetention(max_age_s=spec.stream_max_age_s, max_bytes=spec.stream_max_bytes),
        )

    @classmethod
    async def open(
        cls,
        nats_url: str,
        *,
        stream: str,
        policy: PublishPolicy,
        connect_timeout_s: float = 5.0,
        duplicate_window_s: float | None = None,
        outbox: Path | None = None,
        retention: StreamRetention | None = None,
    ) -> JetStreamPublisher:
        """Connect to ``nats_url`` and ensure ``stream`` exists (see
        :func:`~swe_fleet.nats.connection.open_jetstream`; ``duplicate_window_s`` is the window
        of a stream created now).

        Raises:
            NatsUnreachable: no connection, or JetStream did not answer, within the bounds.
            StreamConfigMismatch: the stream exists with an incompatible config.
        """
        conn = await open_jetstream(
            nats_url,
            connect_timeout_s=connect_timeout_s,
            js_timeout_s=policy.ack_timeout_s,
            streams=[StreamRequirement(stream, duplicate_window_s=duplicate_window_s, retention=retention)],
            policy=policy,
        )
        return cls(conn.nc, stream, policy, url=nats_url, connect_timeout_s=connect_timeout_s, outbox=outbox)

    async def publish(self, event: _Publishable) -> PublishResult:
        """Publish one event with retries; its key is the ``Nats-Msg-Id``.

        Raises:
            PublishError: retries exhausted or a non-transient error (subject and key named).
        """
        if self._closed:
            raise PublishError("the publisher is closed", subject=event.subject, key=event.key)
        payload = event.to_bytes()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.policy.budget_s
        try:
            try:
                # The first attempt runs outside tenacity: almost every publish succeeds at once,
                # and tenacity's per-call machinery costs more than the publish itself
                # (scripts/bench_publish.py). Retries run under the policy, this attempt counted.
                ack = await self._attempt(event, payload, deadline, loop)
            except TRANSIENT_ERRORS as exc:
                if isinstance(exc, NatsRefused):
                    raise  # refused credentials or a denied subject: no retry helps
                first_failure: BaseException | None = exc
                async for attempt in self.policy.retrying(already_spent_s=loop.time() - started):
                    with attempt:
                        if first_failure is not None:
                            failed, first_failure = first_failure, None
                            raise failed  # noqa: B904 - attempt 1's own error, as tenacity sees it
                        ack = await self._attempt(event, payload, deadline, loop)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise PublishError(
                f"publishing {event.subject} key={event.key} failed after "
                f"{exc.last_attempt.attempt_number} attempts within {self.policy.budget_s:g} s: "
                f"{type(last).__name__}: {last}",
                subject=event.subject,
                key=event.key,
            ) from last
        except NatsRefused as exc:
            exc.subject, exc.key = event.subject, event.key
            raise
        except nats.errors.Error as exc:
            raise PublishError(
                f"publishing {event.subject} key={event.key} failed: {type(exc).__name__}: {exc}",
                subject=event.subject,
                key=event.key,
            ) from exc
        return self._checked(event, ack)

    async def _attempt(
        self, event: _Publishable, payload: bytes, deadline: float, loop: asyncio.AbstractEventLoop
    ) -> api.PubAck:
        # No attempt outlives the budget: the ack wait is clamped to what is left of it.
        timeout = min(self.policy.ack_timeout_s, max(deadline - loop.time(), 0.05))
        if self._nc.is_closed:
            if self._closed:  # close() ran meanwhile: do not open a new connection behind it
                raise PublishError("the publisher was closed", subject=event.subject, key=event.key)
            await self._reconnect(timeout)
        try:
            return cast(
                api.PubAck,
                await self._js.publish(
                    event.subject,
                    payload,
                    timeout=timeout,
                    stream=self.stream,
                    headers={"Nats-Msg-Id": event.key},
                ),
            )
        except (TimeoutError, nats.errors.TimeoutError):
            # A denied subject is dropped by the server, which says why on the side: no retry helps.
            denied = permission_denial(self._nc, self._url or "NATS", event.subject)
            if denied is not None:
                raise denied from None
            raise

    def _checked(self, event: _Publishable, ack: api.PubAck) -> PublishResult:
        if ack.stream != self.stream:
            raise PublishError(
                f"{event.subject} was stored in stream {ack.stream!r}, not {self.stream!r}: "
                "two streams claim the subject",
                subject=event.subject,
                key=event.key,
            )
        if not isinstance(ack.seq, int) or ack.seq <= 0:
            raise PublishError(
                f"{event.subject} key={event.key}: PubAck without a stream sequence ({ack!r})",
                subject=event.subject,
                key=event.key,
            )
        duplicate = bool(ack.duplicate)  # None for new messages on this server version
        self.published += 1
        self.duplicates += duplicate
        return PublishResult(key=event.key, stream=ack.stream, seq=ack.seq, duplicate=duplicate)

    async def _reconnect(self, timeout_s: float) -> None:
        """Open a new connection after the client gave up reconnecting (one at a time)."""
        if self._url is None:
            raise nats.errors.ConnectionClosedError
        async with self._reconnect_lock:
            if not self._nc.is_closed:
                return  # another publish reconnected meanwhile
            nc = await connect_nats(self._url, timeout_s=min(timeout_s, self._connect_timeout_s))
            if self._closed:
                await close_nats(nc)
                raise nats.errors.ConnectionClosedError
            self._nc, self._js = nc, nc.jetstream(timeout=self.policy.ack_timeout_s)
            log.info("publish.reconnected", url=self._url)

    async def try_publish_all(self, events: Sequence[_Publishable], concurrency: int = 64) -> PublishOutcome:
        """Publish every event, at most ``concurrency`` in flight, and report instead of raising.

        After the first failure no new publish starts; those in flight finish (each acked or
        failed), so :attr:`PublishOutcome.results` tells exactly which events were acknowledged.
        """
        results: list[PublishResult | None] = [None] * len(events)
        failures: list[PublishError] = []
        await self._publish_into(events, concurrency, results, failures)
        return PublishOutcome(results=results, failure=failures[0] if failures else None)

    async def _publish_into(
        self,
        events: Sequence[_Publishable],
        concurrency: int,
        results: list[PublishResult | None],
        failures: list[PublishError],
    ) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int, e: _Publishable) -> None:
            async with sem:
                if failures:
                    return
                try:
                    results[i] = await self.publish(e)
                except PublishError as exc:
                    failures.append(exc)

        await asyncio.gather(*(one(i, e) for i, e in enumerate(events)))

    async def publish_all(self, events: Sequence[_Publishable], concurrency: int = 64) -> list[PublishResult]:
        """Publish every event, at most ``concurrency`` in flight; results in input order.

        When a publish fails after its retries, every event of this call that was not
        acknowledged (the failed ones and those not yet sent) is appended to the outbox first.
        Cancellation spools the unacknowledged events the same way, then propagates.

        Raises:
            OutboxWritten: a publish failed; the outbox path and count are on the error.
            OutboxError: a publish failed and the outbox could not be written either.
        """
        results: list[PublishResult | None] = [None] * len(events)
        failures: list[PublishError] = []
        try:
            await self._publish_into(events, concurrency, results, failures)
        except asyncio.CancelledError:
            unacked = [e for e, r in zip(events, results, strict=True) if r is None]
            try:
                path = self._spool(unacked)
                log.warning("publish.cancelled.spooled", outbox=str(path), count=len(unacked))
            except OutboxError as exc:
                log.error("publish.cancelled.lost", count=len(unacked), error=str(exc))
            raise
        if not failures:
            return cast(list[PublishResult], results)
        failure = failures[0]
        unacked = [e for e, r in zip(events, results, strict=True) if r is None]
        path = self._spool(unacked)
        log.error("publish.spooled", outbox=str(path), count=len(unacked), error=str(failure))
        raise OutboxWritten(
            f"{failure} -- {len(unacked)} unacknowledged event(s) of {len(events)} were appended to "
            f"the outbox {path}; publish them with: swe-fleet outbox replay {path} --nats-url URL",
            path=path,
            count=len(unacked),
            subject=failure.subject,
            key=failure.key,
        ) from failure

    def _spool(self, events: Sequence[_Publishable]) -> Path:
        submission_id = getattr(events[0], "submission_id", None) if events else None
        path = self.outbox or default_outbox_path(submission_id)
        append_to_outbox(path, entries_of(events))
        return path

    async def close(self, *, drain: bool = True) -> None:
        """Flush and close (bounded); later publishes raise :class:`PublishError`. ``drain=False``
        after NATS failed us: draining a server that does not answer only times out (and leaves
        nats-py's drain futures unretrieved)."""
        self._closed = True
        await close_nats(self._nc, drain=drain)
