"""JetStream publisher: ensure the stream, publish each event with its key as ``Nats-Msg-Id``,
retry only transient errors within bounded attempts and total time, check every PubAck, and
spool whatever was not acknowledged to the outbox so nothing is lost.

Exactly once, by key: JetStream drops a message whose ``Nats-Msg-Id`` it stored within the
stream's *duplicate window*. A retry (or an outbox replay) of a publish whose first attempt did
land, but whose ack was lost, is therefore answered ``duplicate`` as long as it comes within the
window. The window must cover the retry horizon (:attr:`PublishPolicy.retry_horizon_s`); by default
it is :func:`default_duplicate_window_s`, ``max(600 s, 2 x budget)``, and an existing stream with a
shorter window is refused (:class:`~swe_fleet.errors.StreamConfigMismatch`), never changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.js import api
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from swe_fleet.errors import (
    NatsUnreachable,
    OutboxError,
    OutboxWritten,
    PublishError,
    StreamConfigMismatch,
)
from swe_fleet.events import AGENT_RESPONSES_SUBJECTS
from swe_fleet.nats.outbox import append_to_outbox, default_outbox_path, entries_of
from swe_fleet.spec import PublishSpec

log = structlog.get_logger(__name__)

#: Errors that go away by themselves (a reconnect, a restart, a leader election, a slow server).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    # no PubAck in time (also FlushTimeoutError), or asyncio's own timeout
    nats.errors.TimeoutError,
    TimeoutError,
    # the connection is down, being re-established, or was given up (we reconnect it)
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    NatsUnreachable,
    # nobody serves the subject yet: the stream is still recovering after a server restart
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    # 503: JetStream not (yet) available
    nats.js.errors.ServiceUnavailableError,
)

#: Floor of :func:`default_duplicate_window_s` (JetStream's own default is 2 minutes).
MIN_DUPLICATE_WINDOW_S = 600.0


@dataclass(frozen=True)
class PublishPolicy:
    """How hard one publish tries: attempts and total time both bound it.

    Attributes:
        ack_timeout_s: wait for one PubAck (clamped to what is left of the budget).
        max_attempts: attempts per event, the first included.
        budget_s: total seconds one event may spend being retried; no attempt starts after it.
        initial_wait_s, max_wait_s: exponential backoff with jitter between attempts.
    """

    ack_timeout_s: float = 5.0
    max_attempts: int = 12
    budget_s: float = 60.0
    initial_wait_s: float = 0.2
    max_wait_s: float = 5.0

    @classmethod
    def from_spec(cls, spec: PublishSpec) -> PublishPolicy:
        return cls(ack_timeout_s=spec.ack_timeout_s, budget_s=spec.retry_budget_s)

    @property
    def retry_horizon_s(self) -> float:
        """Longest time between the first and the last copy of one event reaching the server."""
        return self.budget_s + self.ack_timeout_s

    def retrying(
        self, sleep: Callable[[float], Any] | None = None, *, already_spent_s: float = 0.0
    ) -> AsyncRetrying:
        """A fresh tenacity controller for one publish.

        Args:
            sleep: injectable for tests (no real waiting).
            already_spent_s: time this publish already used before the controller started (the
                publisher's first attempt runs outside tenacity); the budget counts it.
        """
        kwargs: dict[str, Any] = {}
        if sleep is not None:
            kwargs["sleep"] = sleep
        return AsyncRetrying(
            # stop_before_delay: never sleep into an attempt that would start after the budget.
            stop=stop_after_attempt(self.max_attempts) | stop_before_delay(self.budget_s - already_spent_s),
            wait=wait_exponential_jitter(
                multiplier=self.initial_wait_s, max=self.max_wait_s, jitter=self.initial_wait_s
            ),
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            reraise=False,
            **kwargs,
        )


def default_duplicate_window_s(policy: PublishPolicy | None = None) -> float:
    """The duplicate window a new stream gets: ``max(600, 2 x budget, retry horizon)`` seconds.

    Twice the retry budget covers every retry of a publish with room to spare; the 10-minute
    floor also covers a prompt outbox replay. A longer window costs server memory (one id per
    message in the window), not correctness.
    """
    p = policy or PublishPolicy()
    return max(MIN_DUPLICATE_WINDOW_S, 2 * p.budget_s, p.retry_horizon_s)


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


async def connect_nats(url: str, *, timeout_s: float = 5.0, name: str = "swe-fleet") -> Any:
    """Connect with finite reconnects; bounded by ``timeout_s``.

    Raises:
        NatsUnreachable: no connection within the bound (the URL is named).
    """

    async def _on_error(exc: Exception) -> None:
        log.warning("nats.error", url=url, error=str(exc))

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=[url],
                name=name,
                connect_timeout=min(timeout_s, 2.0),
                allow_reconnect=True,
                max_reconnect_attempts=60,  # finite: -1 makes connect() block forever
                reconnect_time_wait=0.5,
                error_cb=_on_error,
            ),
            timeout_s,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise NatsUnreachable(
            f"cannot reach NATS at {url} within {timeout_s:.0f} s ({type(exc).__name__}: {exc}); "
            "check the URL (publish.nats_url / --nats-url) and that nats-server runs with -js",
            url=url,
        ) from None


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether every subject matched by ``subject`` (may hold wildcards) is matched by ``pattern``."""
    p_tokens, s_tokens = pattern.split("."), subject.split(".")
    for i, p in enumerate(p_tokens):
        if p == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens):
            return False
        s = s_tokens[i]
        if s == ">" or (p != "*" and p != s):
            return False
    return len(p_tokens) == len(s_tokens)


def stream_config_differences(
    config: api.StreamConfig, subjects: Sequence[str], retry_horizon_s: float
) -> list[str]:
    """What makes an existing stream unfit for our events (empty: fit). Pure, for tests."""
    differences = []
    have = list(config.subjects or [])
    missing = [s for s in subjects if not any(subject_covers(h, s) for h in have)]
    if missing:
        differences.append(f"subjects {have} do not cover {missing}")
    if config.storage == api.StorageType.MEMORY:
        differences.append("storage is memory (events must survive a server restart: file storage)")
    window = config.duplicate_window or 0.0
    if window < retry_horizon_s:
        differences.append(
            f"duplicate_window {window:g} s is shorter than the retry horizon {retry_horizon_s:g} s "
            "(a retried event could be stored twice)"
        )
    return differences


async def ensure_stream(
    js: Any,
    name: str,
    subjects: Sequence[str] = AGENT_RESPONSES_SUBJECTS,
    duplicate_window_s: float | None = None,
    *,
    policy: PublishPolicy | None = None,
) -> api.StreamInfo:
    """Create the stream if missing (file storage, ``duplicate_window_s``); check an existing one.

    Args:
        duplicate_window_s: window of a stream this call creates; default
            :func:`default_duplicate_window_s` of ``policy``. Must cover ``policy``'s retry horizon.
        policy: the retry policy of the publishers; an existing stream's window must cover its
            :attr:`~PublishPolicy.retry_horizon_s` (default policy when None).

    Raises:
        StreamConfigMismatch: the stream exists with subjects that do not cover ours, memory
            storage, or a duplicate window shorter than the retry horizon; it is not changed.
        ValueError: ``duplicate_window_s`` is shorter than the retry horizon.
    """
    policy = policy or PublishPolicy()
    window = default_duplicate_window_s(policy) if duplicate_window_s is None else duplicate_window_s
    if window < policy.retry_horizon_s:
        raise ValueError(
            f"duplicate_window_s={window:g} is shorter than the retry horizon {policy.retry_horizon_s:g} s"
        )
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        try:
            return cast(
                api.StreamInfo,
                await js.add_stream(
                    api.StreamConfig(
                        name=name,
                        subjects=list(subjects),
                        storage=api.StorageType.FILE,
                        duplicate_window=window,
                    )
                ),
            )
        except nats.js.errors.BadRequestError:
            info = await js.stream_info(name)  # created concurrently by another publisher
    differences = stream_config_differences(info.config, subjects, policy.retry_horizon_s)
    if differences:
        raise StreamConfigMismatch(
            f"stream {name!r} exists with an incompatible config: {'; '.join(differences)}. "
            "It is left unchanged: fix the stream (nats stream edit) or use another stream name "
            "(publish.stream).",
            stream=name,
            differences=tuple(differences),
        )
    return cast(api.StreamInfo, info)


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
        """Connect to ``spec.nats_url`` and ensure the stream exists (see :func:`ensure_stream`)."""
        return await cls.open(
            spec.nats_url,
            stream=spec.stream,
            policy=PublishPolicy.from_spec(spec),
            connect_timeout_s=spec.connect_timeout_s,
            duplicate_window_s=duplicate_window_s,
            outbox=outbox,
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
    ) -> JetStreamPublisher:
        """Connect to ``nats_url`` and ensure ``stream`` exists.

        Raises:
            NatsUnreachable: no connection, or JetStream did not answer, within the bounds.
            StreamConfigMismatch: the stream exists with an incompatible config.
        """
        nc = await connect_nats(nats_url, timeout_s=connect_timeout_s)
        pub = cls(nc, stream, policy, url=nats_url, connect_timeout_s=connect_timeout_s, outbox=outbox)
        try:
            await asyncio.wait_for(
                ensure_stream(pub._js, stream, duplicate_window_s=duplicate_window_s, policy=policy),
                connect_timeout_s * 2,
            )
        except TimeoutError:
            await nc.close()
            raise NatsUnreachable(
                f"NATS at {nats_url} answered but JetStream did not; start nats-server with -js",
                url=nats_url,
            ) from None
        except BaseException:
            await nc.close()
            raise
        return pub

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

    async def close(self) -> None:
        """Flush and close (bounded); later publishes raise :class:`PublishError`."""
        self._closed = True
        await close_nats(self._nc)


async def close_nats(nc: Any, timeout_s: float = 10.0) -> None:
    """Drain a connected client (bounded), else just close it; never raises."""
    try:
        if nc.is_connected:
            await asyncio.wait_for(nc.drain(), timeout_s)
            return
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        log.debug("nats.drain_failed", error=f"{type(exc).__name__}: {exc}")
    try:
        await asyncio.wait_for(nc.close(), timeout_s)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        # nats-py flushes its reconnect buffer into the dead socket when closed mid-reconnect
        # (ConnectionResetError); the client is closed all the same.
        log.debug("nats.close_failed", error=f"{type(exc).__name__}: {exc}")
